"""Guard scanners: each looks at one text and reports findings; policies combine them."""
