"""Request signing for cloud providers (I/O: credentials come from the environment, files or instance
metadata, and signatures and tokens depend on the clock):

- Bedrock: AWS Signature Version 4, with botocore's signer and credential chain;
- Vertex AI: an OAuth 2 access token from Google's Application Default Credentials (a service-account key
  file named by GOOGLE_APPLICATION_CREDENTIALS, gcloud's credentials, or the metadata server), minted and
  refreshed by google-auth off the event loop before it expires.

The translator stays pure: it marks a request `sign=<provider>`, and the upstream adapter asks the
provider's `AwsSigner` for the signed headers just before sending. Credentials are resolved once at
startup through botocore's standard chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN,
AWS_PROFILE and the shared config and credentials files, SSO, web identity, the container and instance
roles); refreshable ones (roles, SSO) are refreshed off the event loop when they near expiry.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from shared.config import ConfigError, GatehouseConfig, ProviderConfig
from shared.errors import UpstreamAuthError, UpstreamError

# botocore and google-auth (~35 MB in every router) are imported only where a provider signs its requests
if TYPE_CHECKING:
    from botocore.credentials import Credentials
    from google.auth.credentials import Credentials as GoogleCredentials

SERVICE = "bedrock"
GOOGLE_SCOPE = "https://www.googleapis.com/auth/cloud-platform"


class Signer(Protocol):
    async def sign(self, method: str, url: str, headers: Mapping[str, str], body: bytes) -> dict[str, str]: ...


class AwsSigner:
    def __init__(self, credentials: Credentials, region: str, service: str = SERVICE) -> None:
        self._credentials = credentials
        self.region = region
        self.service = service

    async def sign(self, method: str, url: str, headers: Mapping[str, str], body: bytes) -> dict[str, str]:
        """`headers` plus the signature headers (Authorization, X-Amz-Date, X-Amz-Security-Token)."""
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import RefreshableCredentials

        creds = self._credentials
        if isinstance(creds, RefreshableCredentials) and creds.refresh_needed():
            frozen = await asyncio.to_thread(creds.get_frozen_credentials)  # may call STS or IMDS
        else:
            frozen = creds.get_frozen_credentials()
        request = AWSRequest(method=method, url=url, data=body, headers=dict(headers))
        SigV4Auth(frozen, self.service, self.region).add_auth(request)
        return {k: v for k, v in request.headers.items()}


class GoogleSigner:
    """Adds `Authorization: Bearer <access token>`, refreshing the token when it is missing or expiring."""

    def __init__(self, credentials: GoogleCredentials) -> None:
        self._credentials = credentials
        self._lock = asyncio.Lock()

    async def sign(self, method: str, url: str, headers: Mapping[str, str], body: bytes) -> dict[str, str]:
        creds = self._credentials
        if not creds.valid:
            async with self._lock:  # one refresh for every request waiting on it
                if not creds.valid:
                    await self._refresh()
        return {**headers, "authorization": f"Bearer {creds.token}"}

    async def _refresh(self) -> None:
        import google.auth.exceptions
        import google.auth.transport.requests

        try:
            await asyncio.to_thread(self._credentials.refresh, google.auth.transport.requests.Request())
        except google.auth.exceptions.TransportError as exc:
            raise UpstreamError("Google's token endpoint could not be reached.") from exc
        except google.auth.exceptions.GoogleAuthError as exc:
            # the gateway's own credentials: another deployment may still serve (the message is for operators)
            raise UpstreamAuthError("The gateway's Google credentials were rejected.", detail=str(exc)[:300]) from exc


def _signed(provider: ProviderConfig, environ: Mapping[str, str]) -> bool:
    """Bedrock and Vertex take an API key when one is configured and set; else requests are signed."""
    keyed = bool(provider.api_key_env and environ.get(provider.api_key_env))
    return provider.kind in ("bedrock", "vertex") and not keyed


def _google(name: str, provider: ProviderConfig) -> GoogleSigner | None:
    import google.auth
    import google.auth.exceptions

    try:
        credentials, _ = google.auth.default(scopes=[GOOGLE_SCOPE])
    except google.auth.exceptions.DefaultCredentialsError as exc:
        if provider.optional:
            return None
        raise ConfigError(
            f"provider {name!r}: no Google credentials found (GOOGLE_APPLICATION_CREDENTIALS naming a service "
            "account key file, gcloud application-default credentials, or the metadata server)"
        ) from exc
    return GoogleSigner(credentials)


def request_signers(config: GatehouseConfig, environ: Mapping[str, str]) -> dict[str, Signer]:
    """A signer per Bedrock or Vertex provider that a model deploys to; ConfigError when no credentials are
    found (an `optional` provider is left unsigned: its deployments then fail over)."""
    used = {dep.provider for model in config.models for dep in model.deployments}
    signers: dict[str, Signer] = {}
    for name, provider in config.providers.items():
        if name not in used or not _signed(provider, environ):
            continue
        if provider.kind == "vertex":
            google_signer = _google(name, provider)
            if google_signer is not None:
                signers[name] = google_signer
            continue
        if not provider.region:
            raise ConfigError(f"provider {name!r}: kind bedrock needs `region` (e.g. us-east-1)")
        from botocore.session import Session

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
