"""A Google Cloud Vertex AI emulator for Gemini models, written from the public references: Google's OAuth 2
token endpoint for service accounts (the JWT bearer grant of RFC 7523) and Vertex AI's
`projects.locations.publishers.models.generateContent` / `streamGenerateContent`.

`POST /token` takes `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=<JWT>`, checks the
JWT as Google does — RS256, signed by the service account's key (its public half is given to the
emulator), `iss` the account's email, `aud` Google's token URI, a `cloud-platform` scope, `iat`/`exp` at
most an hour apart and not expired — and issues an access token valid for an hour. The model endpoint
takes only such a token (`Authorization: Bearer`), checks the project and location in the path, and
answers with the Gemini emulator's request validation and answers (the bodies are the same API).
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from typing import Any
from urllib.parse import parse_qs

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.emulators import gemini

PROJECT = "gatehouse-emulated"
LOCATION = "us-central1"
CLIENT_EMAIL = "gatehouse-router@gatehouse-emulated.iam.gserviceaccount.com"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"


def service_account(token_uri: str) -> tuple[dict[str, str], bytes]:
    """A new service account key file's content (as Google issues them) and its public key in PEM."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    info = {
        "type": "service_account",
        "project_id": PROJECT,
        "private_key_id": secrets.token_hex(20),
        "private_key": private,
        "client_email": CLIENT_EMAIL,
        "client_id": "100000000000000000001",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
    }
    return info, public


def _b64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _oauth_error(description: str) -> JSONResponse:
    return JSONResponse({"error": "invalid_grant", "error_description": description}, status_code=400)


def create_app() -> Starlette:
    async def token(request: Request) -> Response:
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
        assertion = str(form.get("assertion", ""))
        try:
            head_b64, claims_b64, sig_b64 = assertion.split(".")
            header, claims = json.loads(_b64(head_b64)), json.loads(_b64(claims_b64))
        except ValueError:
            return _oauth_error("Invalid JWT.")
        if header.get("alg") != "RS256":
            return _oauth_error("Invalid JWT: the algorithm must be RS256.")
        public = serialization.load_pem_public_key(request.app.state.public_key)
        assert isinstance(public, rsa.RSAPublicKey)
        try:
            public.verify(_b64(sig_b64), f"{head_b64}.{claims_b64}".encode(), padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            return _oauth_error("Invalid JWT Signature.")
        now = time.time()
        # Google's token endpoint wants its own URI as the audience, wherever the grant is posted
        if claims.get("iss") != CLIENT_EMAIL or claims.get("aud") != GOOGLE_TOKEN_URI:
            return _oauth_error("Invalid JWT: iss or aud.")
        if "https://www.googleapis.com/auth/cloud-platform" not in str(claims.get("scope", "")).split():
            return _oauth_error("Invalid JWT: no cloud-platform scope.")
        iat, exp = float(claims.get("iat", 0)), float(claims.get("exp", 0))
        if exp <= now or exp - iat > 3600 or iat > now + 300:
            return _oauth_error(
                "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe."
            )
        issued = f"ya29.emulated-{secrets.token_urlsafe(16)}"
        request.app.state.tokens.add(issued)
        return JSONResponse({"access_token": issued, "expires_in": 3599, "token_type": "Bearer"})

    async def model(request: Request) -> Response:
        p = request.path_params
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in request.app.state.tokens:
            return gemini._error(401, "Request had invalid authentication credentials.")
        if p["project"] != PROJECT or p["location"] != LOCATION:
            return gemini._error(403, f"Permission denied on resource project {p['project']}.")
        try:
            body: Any = json.loads(await request.body())
        except ValueError:
            return gemini._error(400, "Invalid JSON payload received.")
        request.app.state.requests.append({"path": request.url.path, "headers": dict(request.headers), "body": body})
        name, _, action = p["target"].partition(":")
        if action not in {"generateContent", "streamGenerateContent"}:
            return gemini._error(404, f"Method {action} not found.")
        try:
            return gemini._generate(request, body, name, action == "streamGenerateContent", request.app.state.counter)
        except gemini._Bad as bad:
            return gemini._error(bad.code, bad.message, bad.details)

    app = Starlette(
        routes=[
            Route("/token", token, methods=["POST"]),
            Route(
                "/v1/projects/{project}/locations/{location}/publishers/google/models/{target:path}",
                model,
                methods=["POST"],
            ),
        ]
    )
    app.state.tokens = set()
    app.state.requests = []
    app.state.counter = {"n": 0}
    app.state.public_key = b""
    return app
