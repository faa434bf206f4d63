"""gatehouse services: ingress, guard, router and accounting, each its own process."""
