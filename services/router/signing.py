"""AWS Signature Version 4 for Bedrock requests (I/O: credentials come from the environment, files or
instance metadata, and the signature depends on the clock), with botocore's signer and credential chain.

The translator stays pure: it marks a request `sign=<provider>`, and the upstream adapter asks the
provider's `AwsSigner` for the signed headers just before sending. Credentials are resolved once at
startup through botocore's standard chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN,
AWS_PROFILE and the shared config and credentials files, SSO, web identity, the container and instance
roles); refreshable ones (roles, SSO) are refreshed off the event loop when they near expiry.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials, RefreshableCredentials
from botocore.session import Session

from shared.config import ConfigError, GatehouseConfig, ProviderConfig

SERVICE = "bedrock"


class AwsSigner:
    def __init__(self, credentials: Credentials, region: str, service: str = SERVICE) -> None:
        self._credentials = credentials
        self.region = region
        self.service = service

    async def sign(self, method: str, url: str, headers: Mapping[str, str], body: bytes) -> dict[str, str]:
        """`headers` plus the signature headers (Authorization, X-Amz-Date, X-Amz-Security-Token)."""
        creds = self._credentials
        if isinstance(creds, RefreshableCredentials) and creds.refresh_needed():
            frozen = await asyncio.to_thread(creds.get_frozen_credentials)  # may call STS or IMDS
        else:
            frozen = creds.get_frozen_credentials()
        request = AWSRequest(method=method, url=url, data=body, headers=dict(headers))
        SigV4Auth(frozen, self.service, self.region).add_auth(request)
        return {k: v for k, v in request.headers.items()}


def _needs_sigv4(provider: ProviderConfig, environ: Mapping[str, str]) -> bool:
    """Bedrock takes an API key (bearer) when one is configured and set; else requests are signed."""
    return provider.kind == "bedrock" and not (provider.api_key_env and environ.get(provider.api_key_env))


def request_signers(config: GatehouseConfig, environ: Mapping[str, str]) -> dict[str, AwsSigner]:
    """A signer per Bedrock provider that a model deploys to; ConfigError when no credentials are found
    (an `optional` provider is left unsigned: its deployments then fail over)."""
    used = {dep.provider for model in config.models for dep in model.deployments}
    signers: dict[str, AwsSigner] = {}
    for name, provider in config.providers.items():
        if name not in used or not _needs_sigv4(provider, environ):
            continue
        if not provider.region:
            raise ConfigError(f"provider {name!r}: kind bedrock needs `region` (e.g. us-east-1)")
        credentials = Session().get_credentials()
        if credentials is None:
            if provider.optional:
                continue
            raise ConfigError(
                f"provider {name!r}: no AWS credentials found (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                "AWS_PROFILE, shared credentials files, SSO, or a container or instance role)"
            )
        signers[name] = AwsSigner(credentials, provider.region)
    return signers
