"""Builds the guard evaluation set (dataset.jsonl): labelled prompts with fake secrets and PII, and hard negatives.

Every secret is fake but has its vendor's real shape (prefixes, lengths, alphabets); cards pass Luhn,
IBANs pass mod-97, phone numbers are valid per libphonenumber. Hard negatives are text that fools
naive detectors: hashes, UUIDs, git SHAs, base64 blobs, placeholders, documented example keys, prose
about keys, invalid cards/IBANs/SSNs, order numbers, versions, private IPs, dates that are not
birthdays. Deterministic (fixed seed): `python -m tests.guard_eval.generate` rewrites the file.

Each line: {"id", "category", "text", "labels": [{"scanner": "secrets"|"pii", "type", "value"}]}.
An item with no labels must produce no finding from the secrets and PII scanners.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import random
import string
import uuid
from collections.abc import Callable
from pathlib import Path

import phonenumbers

OUT = Path(__file__).with_name("dataset.jsonl")
rng = random.Random(20261127)

ALNUM = string.ascii_letters + string.digits
B64URL = ALNUM + "_-"
HEX = "0123456789abcdef"
B32 = string.ascii_uppercase + "234567"


def rand(alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


# ---------------------------------------------------------------------------------------- secrets
def openai_key() -> str:
    if rng.random() < 0.3:
        return "sk-" + rand(ALNUM, 20) + "T3BlbkFJ" + rand(ALNUM, 20)
    kind = rng.choice(["proj", "proj", "svcacct", "admin"])
    return f"sk-{kind}-" + rand(B64URL, 74) + "T3BlbkFJ" + rand(B64URL, 74)


def anthropic_key() -> str:
    return "sk-ant-api03-" + rand(B64URL, 93) + "AA"


def jwt() -> str:
    header = b64url(json.dumps({"alg": rng.choice(["HS256", "RS256", "ES256"]), "typ": "JWT"}).encode())
    claims = {
        "sub": str(rng.randint(10000, 99999)),
        "name": rng.choice(NAMES),
        "iat": rng.randint(1_600_000_000, 1_800_000_000),
    }
    if rng.random() < 0.5:
        claims["scope"] = "read:orders write:orders"
    payload = b64url(json.dumps(claims).encode())
    return f"{header}.{payload}.{rand(B64URL, 43)}"


def pem_key() -> str:
    kind = rng.choice(["RSA PRIVATE KEY", "PRIVATE KEY", "EC PRIVATE KEY", "OPENSSH PRIVATE KEY"])
    body = base64.b64encode(rng.randbytes(rng.choice([121, 600, 1190]))).decode()
    lines = "\n".join(body[i : i + 64] for i in range(0, len(body), 64))
    return f"-----BEGIN {kind}-----\n{lines}\n-----END {kind}-----"


def strong_password() -> str:
    return rand(ALNUM, rng.randint(8, 12)) + rng.choice("!*_-.") + rand(string.digits, 2)


def slack_webhook() -> str:
    return f"https://hooks.slack.com/services/T{rand(B32, 9)}/B{rand(B32, 9)}/{rand(ALNUM, 24)}"


def azure_conn() -> tuple[str, str]:
    key = base64.b64encode(rng.randbytes(64)).decode()
    conn = (
        f"DefaultEndpointsProtocol=https;AccountName=st{rand(string.ascii_lowercase, 8)};"
        f"AccountKey={key};EndpointSuffix=core.windows.net"
    )
    return conn, key


SECRET_MAKERS: dict[str, Callable[[], str]] = {
    "openai": openai_key,
    "anthropic": anthropic_key,
    "google-api-key": lambda: "AIza" + rand(B64URL, 35),
    "aws-access-key-id": lambda: rng.choice(["AKIA", "ASIA"]) + rand(B32, 16),
    "github-pat": lambda: rng.choice(["ghp_", "gho_", "ghs_", "ghu_"]) + rand(ALNUM, 36),
    "github-fine-grained": lambda: "github_pat_" + rand(ALNUM, 22) + "_" + rand(ALNUM, 59),
    "gitlab-pat": lambda: "glpat-" + rand(B64URL, 20),
    "slack-bot-token": lambda: f"xoxb-{rand(string.digits, 11)}-{rand(string.digits, 13)}-{rand(ALNUM, 24)}",
    "slack-user-token": lambda: (
        f"xoxp-{rand(string.digits, 11)}-{rand(string.digits, 11)}-{rand(string.digits, 13)}-{rand(HEX, 32)}"
    ),
    "slack-webhook": slack_webhook,
    "stripe-live": lambda: rng.choice(["sk_live_", "rk_live_"]) + rand(ALNUM, rng.choice([24, 99])),
    "stripe-test": lambda: "sk_test_" + rand(ALNUM, 24),
    "twilio-api-key": lambda: "SK" + rand(HEX, 32),
    "sendgrid": lambda: "SG." + rand(B64URL, 22) + "." + rand(B64URL, 43),
    "npm": lambda: "npm_" + rand(ALNUM, 36),
    "pypi": lambda: "pypi-AgEIcHlwaS5vcmc" + rand(B64URL, 120),
    "huggingface": lambda: "hf_" + rand(string.ascii_letters, 34),
    "jwt": jwt,
    "private-key": pem_key,
    "google-oauth-secret": lambda: "GOCSPX-" + rand(B64URL, 28),
    "groq": lambda: "gsk_" + rand(ALNUM, 52),
    "digitalocean": lambda: "dop_v1_" + rand(HEX, 64),
    "databricks": lambda: "dapi" + rand(HEX, 32),
    "shopify": lambda: "shpat_" + rand(HEX, 32),
    "telegram": lambda: f"{rng.randint(100000000, 9999999999)}:AA{rand(B64URL, 33)}",
    "mailchimp": lambda: rand(HEX, 32) + "-us" + str(rng.randint(1, 21)),
    "postman": lambda: f"PMAK-{rand(HEX, 24)}-{rand(HEX, 34)}",
    "age": lambda: "AGE-SECRET-KEY-1" + rand("QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L", 58),
    "vault": lambda: "hvs." + rand(B64URL, 91),
}

SECRET_TEMPLATES = [
    "Here is my key {v} can you tell me why requests fail with 401?",
    'import openai\nclient = Client(api_key="{v}")\nprint(client.models.list())',
    'export TOKEN={v}\ncurl -s https://api.example.com/v1/me -H "Authorization: Bearer $TOKEN"',
    '{{\n  "name": "deploy-bot",\n  "credential": "{v}",\n  "region": "eu-west-1"\n}}',
    "2024-05-02T10:11:12Z ERROR auth failed for token {v} (status=403)",
    "settings:\n  upstream:\n    key: {v}\n    timeout: 30",
    "Why does this not work?\n\n```\nconst k = '{v}';\nfetch(url, {{headers: {{'X-Api-Key': k}}}})\n```",
    "I accidentally pushed {v} to a public repo, how do I rotate it?",
    "config.set('auth', '{v}')  # TODO move to vault",
    "Debug output:\nheaders={{'authorization': 'Bearer {v}', 'accept': 'application/json'}}",
]


def secret_items() -> list[dict[str, object]]:
    items: list[dict[str, object]] = []
    for kind, make in SECRET_MAKERS.items():
        for _ in range(6):
            value = make()
            template = rng.choice(SECRET_TEMPLATES)
            if kind == "private-key":
                template = rng.choice(
                    ["Can you check this key file?\n{v}\n", "cat ~/.ssh/id_rsa\n{v}", "key.pem:\n\n{v}\n\nthanks"]
                )
            items.append(_item("secret/" + kind, template.format(v=value), [("secrets", kind, value)]))
    # context-anchored and structural secrets
    for _ in range(8):
        secret = rand(ALNUM + "/+", 40)
        kid = "AKIA" + rand(B32, 16)
        text = rng.choice(
            [
                f"[default]\naws_access_key_id = {kid}\naws_secret_access_key = {secret}\nregion = us-east-1",
                f"AWS_ACCESS_KEY_ID={kid}\nAWS_SECRET_ACCESS_KEY={secret}",
                f'{{"AccessKeyId": "{kid}", "SecretAccessKey": "{secret}"}}',
            ]
        )
        items.append(
            _item("secret/aws-pair", text, [("secrets", "aws-access-key-id", kid), ("secrets", "aws-secret", secret)])
        )
    for _ in range(6):
        conn, key = azure_conn()
        items.append(_item("secret/azure-storage", f"connection string: {conn}", [("secrets", "azure", key)]))
    for _ in range(10):
        pw = strong_password()
        user = rng.choice(["admin", "app", "svc_orders", "postgres"])
        host = rng.choice(["db.internal", "10.1.2.3", "prod-db.acme.io", "localhost"])
        text = rng.choice(
            [
                f"DATABASE_URL=postgres://{user}:{pw}@{host}:5432/orders",
                f"mongo = MongoClient('mongodb+srv://{user}:{pw}@{host}/test?retryWrites=true')",
                f"redis://:{pw}@{host}:6379/0 is refusing connections",
                f"amqp://{user}:{pw}@{host}:5672/%2f",
            ]
        )
        items.append(_item("secret/url-password", text, [("secrets", "url-password", pw)]))
    for _ in range(6):
        pw = strong_password()
        text = (
            f"Server=tcp:sql-{rand(string.ascii_lowercase, 6)}.database.windows.net,1433;"
            f"Initial Catalog=sales;User ID=reporter;Password={pw};Encrypt=True;"
        )
        items.append(_item("secret/conn-string", text, [("secrets", "conn-string", pw)]))
    for _ in range(10):
        pw = strong_password()
        text = rng.choice(
            [
                f'db_config = {{"host": "db", "user": "app", "password": "{pw}"}}',
                f"spring.datasource.password='{pw}'",
                f"DB_PASSWORD={pw}",
                f'smtp:\n  user: mailer\n  password: "{pw}"',
                f'my wifi password: "{pw}" stopped working after the update',
            ]
        )
        items.append(_item("secret/password", text, [("secrets", "password", pw)]))
    for _ in range(12):
        value = rand(ALNUM, rng.choice([24, 32, 40, 48]))
        name = rng.choice(["api_key", "API_KEY", "client_secret", "secret_key", "access_token", "apiKey", "auth_token"])
        text = rng.choice(
            [
                f'{name} = "{value}"',
                f"{name}: {value}",
                f"const {name} = '{value}';",
                f"export {name.upper()}={value}",
                f"--{name.replace('_', '-')}={value}",
            ]
        )
        items.append(_item("secret/generic", text, [("secrets", "generic", value)]))
    for _ in range(6):
        token = rand(B64URL, 40)
        text = f"curl -H 'Authorization: Bearer {token}' https://internal.acme.io/api/v2/orders"
        items.append(_item("secret/bearer", text, [("secrets", "bearer", token)]))
    for _ in range(6):
        value = rand(HEX, 32)
        text = rng.choice([f"DATADOG_API_KEY={value}", f'{{"apiKey": "{value}"}}', f"api_key: {value}"])
        items.append(_item("secret/generic-hex", text, [("secrets", "generic", value)]))
    for _ in range(4):
        token = SECRET_MAKERS["telegram"]()
        text = f"requests.post('https://api.telegram.org/bot{token}/sendMessage', json=msg)"
        items.append(_item("secret/telegram-url", text, [("secrets", "telegram", token)]))
    for _ in range(8):
        pw = strong_password()
        text = rng.choice(
            [
                f"database:\n  user: app\n  password: {pw}\n  host: db",
                f"db_password = {pw}",
                f"my password is {pw} but the login page says it is wrong",
                f"The admin password was {pw}. Please rotate it.",
            ]
        )
        items.append(_item("secret/password-unquoted", text, [("secrets", "password", pw)]))
    for _ in range(6):  # obfuscated with invisible characters
        value = SECRET_MAKERS["github-pat"]()
        hidden = value[:10] + "\u200b" + value[10:]
        items.append(_item("secret/zero-width", f"token: {hidden}", [("secrets", "github-pat", hidden)]))
    return items


# ---------------------------------------------------------------------------------------- PII
NAMES = ["Alice Martin", "Bob Chen", "Carla Diaz", "Deepak Rao", "Emma Schulz", "Farid Haddad", "Grace Kim"]
FIRST = ["alice", "bob", "carla", "deepak", "emma", "farid", "grace", "hiro", "ines", "jonas", "kofi", "lena"]
LAST = ["martin", "chen", "diaz", "rao", "schulz", "haddad", "kim", "tanaka", "silva", "berg", "mensah", "novak"]
DOMAINS = [
    "gmail.com",
    "outlook.com",
    "acme-corp.io",
    "mail.example.org",
    "uni-heidelberg.de",
    "company.co.uk",
    "proton.me",
]


def email() -> str:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    local = rng.choice(
        [f"{first}.{last}", f"{first}{rng.randint(1, 99)}", f"{first[0]}{last}", f"{first}+news", f"{first}_{last}"]
    )
    return f"{local}@{rng.choice(DOMAINS)}"


def luhn_complete(prefix: str, length: int) -> str:
    body = prefix + rand(string.digits, length - len(prefix) - 1)
    for check in string.digits:
        candidate = body + check
        total = 0
        for i, ch in enumerate(reversed(candidate)):
            d = int(ch) * (2 if i % 2 else 1)
            total += d - 9 if d > 9 else d
        if total % 10 == 0:
            return candidate
    raise AssertionError


def card() -> str:
    prefix, length = rng.choice([("4", 16), ("51", 16), ("55", 16), ("2221", 16), ("34", 15), ("37", 15), ("6011", 16)])
    digits = luhn_complete(prefix, length)
    style = rng.choice(["space", "dash", "plain"])
    if length == 15:
        groups = [digits[:4], digits[4:10], digits[10:]]
    else:
        groups = [digits[i : i + 4] for i in range(0, 16, 4)]
    return {"space": " ", "dash": "-", "plain": ""}[style].join(groups)


BBAN: dict[str, Callable[[], str]] = {
    "DE": lambda: rand(string.digits, 18),
    "GB": lambda: rand(string.ascii_uppercase, 4) + rand(string.digits, 14),
    "FR": lambda: rand(string.digits, 23),
    "ES": lambda: rand(string.digits, 20),
    "NL": lambda: rand(string.ascii_uppercase, 4) + rand(string.digits, 10),
    "IT": lambda: rng.choice(string.ascii_uppercase) + rand(string.digits, 22),
    "BE": lambda: rand(string.digits, 12),
    "CH": lambda: rand(string.digits, 17),
    "AT": lambda: rand(string.digits, 16),
    "PL": lambda: rand(string.digits, 24),
    "SE": lambda: rand(string.digits, 20),
    "IE": lambda: rand(string.ascii_uppercase, 4) + rand(string.digits, 14),
}


def iban(grouped: bool | None = None) -> str:
    country = rng.choice(list(BBAN))
    bban = BBAN[country]()
    numeric = "".join(str(int(c, 36)) for c in bban + country + "00")
    check = 98 - int(numeric) % 97
    value = f"{country}{check:02d}{bban}"
    if grouped if grouped is not None else rng.random() < 0.6:
        value = " ".join(value[i : i + 4] for i in range(0, len(value), 4))
    return value


def phone() -> str:
    region = rng.choice(["US", "US", "GB", "DE", "FR", "IN", "BR", "JP", "AU", "ES", "NL", "CA"])
    example = phonenumbers.example_number_for_type(region, phonenumbers.PhoneNumberType.MOBILE)
    assert example is not None
    while True:
        national = str(example.national_number)
        mutated = national[:-4] + rand(string.digits, 4)
        number = phonenumbers.parse(f"+{example.country_code}{mutated}", None)
        if phonenumbers.is_valid_number(number):
            break
    if region in ("US", "CA") and rng.random() < 0.5:
        n = str(number.national_number)
        return rng.choice([f"({n[:3]}) {n[3:6]}-{n[6:]}", f"{n[:3]}-{n[3:6]}-{n[6:]}", f"{n[:3]}.{n[3:6]}.{n[6:]}"])
    fmt = rng.choice([phonenumbers.PhoneNumberFormat.INTERNATIONAL, phonenumbers.PhoneNumberFormat.E164])
    text = phonenumbers.format_number(number, fmt)
    if region in ("GB", "DE") and fmt == phonenumbers.PhoneNumberFormat.INTERNATIONAL and rng.random() < 0.5:
        cc = f"+{number.country_code} "
        text = text.replace(cc, cc + "(0)", 1)
    return text


def ssn() -> str:
    area = rng.choice([a for a in range(1, 900) if a != 666])
    return f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"


def public_ipv4() -> str:
    while True:
        addr = ipaddress.IPv4Address(rng.getrandbits(32))
        if addr.is_global and not addr.is_multicast:
            return str(addr)


def public_ipv6() -> str:
    prefix = rng.choice(["2001:4860", "2a00:1450", "2606:4700", "2a03:2880", "2400:cb00"])
    groups = [format(rng.getrandbits(16), "x") for _ in range(6)]
    if rng.random() < 0.5:
        return f"{prefix}:{groups[0]}:{groups[1]}::{groups[2]}"
    return ":".join([prefix, *groups])


MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October"]


def dob() -> str:
    y, m, d = rng.randint(1940, 2005), rng.randint(1, 12), rng.randint(1, 28)
    return rng.choice(
        [f"{m:02d}/{d:02d}/{y}", f"{y}-{m:02d}-{d:02d}", f"{d} {MONTHS[m % 10]} {y}", f"{MONTHS[m % 10]} {d}, {y}"]
    )


STREETS = ["Oak", "Maple", "Elm", "Washington", "Lake", "Hill", "Cedar", "Park", "Sunset", "Main"]
TYPES = ["Street", "St", "Avenue", "Ave", "Road", "Blvd", "Lane", "Drive", "Court", "Way"]
CITIES = [
    ("Springfield", "IL", "62704"),
    ("Austin", "TX", "78701"),
    ("Portland", "OR", "97205"),
    ("Denver", "CO", "80202"),
]


def address() -> str:
    base = f"{rng.randint(1, 9999)} {rng.choice(STREETS)} {rng.choice(TYPES)}"
    if rng.random() < 0.5:
        city, state, zipc = rng.choice(CITIES)
        base += f", {city}, {state} {zipc}"
    return base


PII_MAKERS: dict[str, tuple[Callable[[], str], list[str]]] = {
    "email": (
        email,
        [
            "Please send the invoice to {v} by Friday.",
            "From: {v}\nSubject: refund request\n\nHi team,",
            "Customer record: name=Jane, contact={v}, tier=gold",
            "can you write a polite reply to {v} who complained about the delay",
        ],
    ),
    "phone": (
        phone,
        [
            "You can reach me on {v} after 6pm.",
            "Caller ID {v} left a voicemail about the outage.",
            "Emergency contact: {v}",
            "Customer: Jane Roe, phone {v}, wants a callback",
        ],
    ),
    "credit_card": (
        card,
        [
            "My card number is {v} and it was charged twice.",
            "payment failed for card {v} exp 09/27",
            "Please update billing: {v}",
            "Card: {v}\nCVV: 123",
        ],
    ),
    "iban": (
        iban,
        [
            "Please wire the deposit to IBAN {v} before Monday.",
            "Bank details: {v} (BIC DEUTDEFF)",
            "refund to account {v} please",
        ],
    ),
    "ssn": (
        ssn,
        [
            "My SSN is {v}, I need help filling in the W-4.",
            "Applicant SSN: {v}",
            "social security number {v} was rejected by the portal",
        ],
    ),
    "ip_address": (
        lambda: public_ipv4() if rng.random() < 0.7 else public_ipv6(),
        [
            "Failed password for root from {v} port 52144 ssh2",
            "The attacker IP was {v}, should I block it?",
            '{{"client_ip": "{v}", "path": "/login", "status": 401}}',
        ],
    ),
    "date_of_birth": (
        dob,
        [
            "Patient DOB: {v}, allergic to penicillin.",
            "I was born on {v} in Lyon.",
            "Date of birth: {v}",
            "birthday {v}, please update my profile",
        ],
    ),
    "street_address": (
        address,
        [
            "Ship it to {v} please.",
            "My new address is {v}.",
            "Deliver to: {v}\nLeave at the door.",
        ],
    ),
}


def pii_items() -> list[dict[str, object]]:
    items: list[dict[str, object]] = []
    counts = {"email": 30, "phone": 36, "credit_card": 30, "iban": 30, "ssn": 20, "ip_address": 24}
    counts |= {"date_of_birth": 20, "street_address": 20}
    for entity, (make, templates) in PII_MAKERS.items():
        for _ in range(counts[entity]):
            value = make()
            items.append(_item("pii/" + entity, rng.choice(templates).format(v=value), [("pii", entity, value)]))
    for _ in range(8):  # obfuscated with invisible characters
        value = email()
        hidden = value.replace("@", "\u200b@", 1) if rng.random() < 0.5 else value.replace(".", "\u200c.", 1)
        items.append(_item("pii/zero-width", f"write to {hidden} today", [("pii", "email", hidden)]))
    for _ in range(4):
        value = email().upper()
        items.append(_item("pii/email-upper", f"CONTACT: {value}", [("pii", "email", value)]))
    for _ in range(15):  # several entities in one text
        e, p, c = email(), phone(), card()
        text = f"Name: Jane Roe\nEmail: {e}\nPhone: {p}\nCard on file: {c}\nNotes: prefers email"
        items.append(_item("pii/mixed", text, [("pii", "email", e), ("pii", "phone", p), ("pii", "credit_card", c)]))
    return items


# ---------------------------------------------------------------------------------------- hard negatives
PROSE = [
    "Rotate your API keys every 90 days and never paste them into chat tools.",
    "OpenAI keys start with sk- and Anthropic keys with sk-ant-; store them in a secrets manager.",
    "Set the OPENAI_API_KEY environment variable before running the script.",
    "Our password policy requires 12 characters, one digit and one symbol.",
    "How do JWTs work? The token has a header, a payload and a signature separated by dots.",
    "To create a GitHub personal access token go to Settings > Developer settings > Tokens.",
    "The AWS access key id identifies the key; the secret access key signs requests.",
    "Write a function that validates credit card numbers with the Luhn algorithm.",
    "What is the format of a German IBAN and how is the check digit computed?",
    "Explain the difference between a private key and a public key in TLS.",
    "The meeting is on 03/14/2025 at 10:00 in room 4.",
    "Our Q3 revenue grew 12% to 4.2 million across 1,284 accounts.",
    "Please summarise the attached incident report in three bullet points.",
    "The token limit for this model is 128000 and the output cap is 4096 tokens.",
    "Ignore the noise in the logs; the failures started after deploy 1432.",
    "Use a password manager and enable two-factor authentication everywhere.",
]


def hard_negative_items() -> list[dict[str, object]]:
    neg: list[tuple[str, str]] = []
    for text in PROSE:
        neg.append(("neg/prose", text))
    for _ in range(12):
        neg.append(("neg/uuid", f"request_id={uuid.UUID(int=rng.getrandbits(128))} took 231ms"))
        neg.append(("neg/uuid", f'{{"idempotency_key": "{uuid.UUID(int=rng.getrandbits(128))}", "amount": 1200}}'))
    for _ in range(12):
        sha = hashlib.sha1(rng.randbytes(16)).hexdigest()
        neg.append(("neg/git", f"commit {sha}\nAuthor: dev-bot\nDate: Thu May 2 10:11:12 2024"))
        neg.append(("neg/git", f"git checkout {sha[:12]} && git cherry-pick {sha}"))
    for _ in range(10):
        digest = hashlib.sha256(rng.randbytes(16)).hexdigest()
        neg.append(("neg/hash", f"sha256sum: {digest}  gatehouse-0.1.0.tar.gz"))
        neg.append(("neg/hash", f"image: registry.acme.io/api@sha256:{digest}"))
        neg.append(("neg/hash", f"md5 {hashlib.md5(rng.randbytes(8)).hexdigest()} etag mismatch"))
    for _ in range(10):
        blob = base64.b64encode(rng.randbytes(rng.choice([48, 96, 180]))).decode()
        neg.append(("neg/base64", f"payload (base64): {blob}"))
        integrity = base64.b64encode(hashlib.sha512(rng.randbytes(8)).digest()).decode()
        neg.append(("neg/base64", f'"integrity": "sha512-{integrity}",'))
    for _ in range(6):
        png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + rng.randbytes(60)).decode()
        neg.append(("neg/base64", f'<img src="data:image/png;base64,{png}">'))
    neg += [
        ("neg/placeholder", 'client = OpenAI(api_key="sk-...")'),
        ("neg/placeholder", "OPENAI_API_KEY=sk-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"),
        ("neg/placeholder", "export GITHUB_TOKEN=ghp_XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"),
        ("neg/placeholder", 'api_key = "<YOUR_API_KEY>"'),
        ("neg/placeholder", "api_key = os.environ['OPENAI_API_KEY']"),
        ("neg/placeholder", "token = get_token(scope='read')"),
        ("neg/placeholder", 'password = "********"'),
        ("neg/placeholder", "DB_PASSWORD=${DB_PASSWORD}"),
        ("neg/placeholder", "postgres://user:password@localhost:5432/app"),
        ("neg/placeholder", 'password: "{{ vault_db_password }}"'),
        ("neg/placeholder", "password = request.form['password']"),
        ("neg/placeholder", "aws_access_key_id = AKIAIOSFODNN7EXAMPLE"),
        ("neg/placeholder", "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
        ("neg/placeholder", "Authorization: Bearer <token>"),
        ("neg/placeholder", "stripe.api_key = 'sk_test_your_key_here'"),
        ("neg/placeholder", "The header -----BEGIN RSA PRIVATE KEY----- marks a PEM file; never share one."),
        ("neg/placeholder", "key: -----BEGIN PRIVATE KEY-----\n...\n-----END PRIVATE KEY-----"),
        ("neg/placeholder", "jwt = 'eyJhbGciOiJIUzI1NiJ9.not-a-payload.sig'"),
        ("neg/code", "max_tokens: 4096\ntemperature: 0.2\ntokenizer: cl100k_base"),
        ("neg/code", 'tokenizer_name = "meta-llama/Llama-2-7b-hf"'),
        ("neg/code", "secret_name: my-app-db-credentials-prod"),
        ("neg/code", "api_key_env: OPENAI_API_KEY"),
        ("neg/code", "cache_key = f'user:{user_id}:profile'"),
        ("neg/code", 'next_page_token: "CiAKGjBpNDd2Nmp2Zml2cXRwYjBpOXA3Z2tqZhIHEgVzcGFjZQ"'),
        ("neg/code", "csrf_token = 'a8f5f167f44f4964e6c998dee827110c4a8f5f167f44f4964'"),
        ("neg/code", "token_count = 1284573"),
        ("neg/code", "def check_password(password: str) -> bool:\n    return len(password) >= 12"),
        ("neg/code", "for (let i = 0; i < tokens.length; i++) { total += tokens[i].length; }"),
        ("neg/code", "const publishable = 'pk_live_51H8xYzAbCdEfGhIjKlMnOpQr';"),
        ("neg/code", "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABgQC7vbqajDhA5FQ4mWk9yWLkqg9Zcv8NP9G dev@laptop"),
        ("neg/code", "wallet: 0x52908400098527886E0F7030069857D2E4169EE7"),
        ("neg/code", "pod/api-7d9f8b6c5d-x2k4p   1/1   Running   0   3h12m"),
        ("neg/code", "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ("neg/code", "s3://acme-data-lake/raw/events/2024/05/02/part-00017-3f9c2a.snappy.parquet"),
        ("neg/code", "background: #1e90ff; border: 1px solid #ccc; font: 14px/1.4 Inter, sans-serif;"),
        ("neg/code", "@app.route('/users/<int:user_id>')\ndef show(user_id): ..."),
        ("neg/code", "git clone git@github.com:acme/gatehouse.git"),
        ("neg/code", '<img srcset="logo@2x.png 2x, logo@3x.png 3x">'),
        ("neg/code", "npm install lodash@4.17.21 react@18.2.0"),
        ("neg/code", "docker run -p 8080:8080 -e LOG_LEVEL=debug acme/api:1.4.2"),
        ("neg/code", "token = getUserAccessTokenFromCache(session)"),
        ("neg/code", "client_secret: projects/123456/secrets/oauth/versions/3"),
        ("neg/code", "env:\n  GITHUB_TOKEN: ${{ secrets.GITHUB_TOKEN }}"),
        ("neg/code", "password_reset_url: https://acme.io/account/reset"),
        ("neg/code", "password_min_length: 12\npassword: string\napi_key: string"),
        ("neg/code", "auth_token_ttl: 3600\nsecret_ref: prod/payments/stripe-webhook"),
        ("neg/code", "signing_key_id: key-2024-05-rotation"),
        ("neg/code", "x-request-id: 01HX8Z3K5V7M9Q2R4T6W8Y0A1C"),
        (
            "neg/code",
            "-----BEGIN CERTIFICATE-----\nMIIDdzCCAl+gAwIBAgIEAgAAuTANBgkqhkiG9w0BAQUFADBaMQswCQYDVQQGEwJJ\n"
            "-----END CERTIFICATE-----",
        ),
        (
            "neg/code",
            "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEXu3lNvr4gyo8oh3K1jD1nxbHb7Dp\n"
            "-----END PUBLIC KEY-----",
        ),
        ("neg/code", "sentry_dsn = 'https://4f1c2b9e7d@o450123.ingest.sentry.io/5512345'"),
        ("neg/prose", "The password is incorrect, please try again or reset it."),
        ("neg/prose", "My password was changed yesterday and I cannot log in."),
        ("neg/prose", "I was born in 1985 and moved to Lyon in 2010."),
        ("neg/prose", "The DOB field must use the MM/DD/YYYY format."),
        ("neg/log", "route add 192.168.0.0/24 via 10.0.0.1; Windows build 10.0.19045.3803"),
        ("neg/log", "2024-05-02 10:11:12,345 INFO [worker-3] processed 1532 events in 0.82s"),
        ("neg/log", "GET /api/v1/orders?page=2&per_page=50 200 12.3ms ua=Mozilla/5.0"),
        ("neg/log", "connected to 10.0.3.17:5432 (replica 192.168.1.20), ping 127.0.0.1 ok"),
        ("neg/log", "binding to 0.0.0.0:8080, docs example host 192.0.2.15 and 203.0.113.9"),
        ("neg/log", "build 2024.05.02.1 deployed; version 1.2.3.4 is now live"),
        ("neg/log", "SNMP OID 1.3.6.1.2.1.1.3.0 returned 42"),
        ("neg/log", "kernel: eth0 link up, MAC 00:1a:2b:3c:4d:5e, ipv6 fe80::1ff:fe23:4567:890a"),
        ("neg/log", "std::vector<int> v; v.reserve(1024); // C++"),
        ("neg/numbers", "Order #4492-1183-2291 shipped on 2024-05-02."),
        ("neg/numbers", "Tracking number 1Z999AA10123456784, invoice INV-2024-000381."),
        ("neg/numbers", "ISBN 978-3-16-148410-0 and ISSN 0317-8471"),
        ("neg/numbers", "The card 4111 1111 1111 1112 fails the checksum, as it should."),
        ("neg/numbers", "Test with 1234 5678 9012 3456 and 0000 0000 0000 0000 first."),
        ("neg/numbers", "Reference 5500 0000 0000 0005 is not a number we issued"),
        ("neg/numbers", "Ticket 123-45-678 and part number 000-12-3456 and 987-65-4321"),
        ("neg/numbers", "Call extension 4411 or dial 555-0100 (fictional)."),
        ("neg/numbers", "Invalid phone +1 123 456 7890 was rejected by the form."),
        ("neg/numbers", "IBAN DE89 3704 0044 0532 0130 01 has a wrong check digit."),
        ("neg/numbers", "GB82 WEST 1234 5698 7654 is too short to be an IBAN"),
        ("neg/numbers", "Timestamp 1714644672123, epoch 1714644672, offset +0200"),
        ("neg/numbers", "Coordinates 48.8566, 2.3522; elevation 35 m"),
        ("neg/numbers", "Matrix: [[12, 34, 56], [78, 90, 12]] has determinant 0"),
        ("neg/numbers", "Price 1,299.00 EUR, qty 3, SKU 884512-031"),
        ("neg/numbers", "Account number ending in 4821 was charged $19.99"),
        ("neg/dates", "The release is planned for 2025-03-14 and the retro for 03/21/2025."),
        ("neg/dates", "Invoice date: 14.03.2024, due date: 13.04.2024"),
        ("neg/dates", "The company was founded on 12 March 1998 in Berlin."),
        ("neg/address", "We sold 500 Apple Watches and 3 Big Screens last week."),
        ("neg/address", "Chapter 3 covers Court Rulings on data retention."),
        ("neg/address", "Run 10 Main loops, then the 2 Side tasks."),
        ("neg/email", "Use the @Override annotation and @pytest.fixture decorators."),
        ("neg/email", "ping user@localhost and admin@intranet for access"),
        ("neg/email", "Mention @alice and @bob-dev in the PR."),
    ]
    return [_item(cat, text, []) for cat, text in neg]


def clean_items() -> list[dict[str, object]]:
    words = (
        "the model should answer briefly and cite its sources when it can because users read the answers on "
        "small screens and want to act quickly on what they learn from the assistant about their orders"
    ).split()
    out = []
    for _ in range(30):
        n = rng.randint(20, 120)
        out.append(_item("clean/prose", " ".join(rng.choice(words) for _ in range(n)).capitalize() + ".", []))
    return out


_counter = 0


def _item(category: str, text: str, labels: list[tuple[str, str, str]]) -> dict[str, object]:
    global _counter  # noqa: PLW0603  (a build script; ids only need to be stable per run)
    _counter += 1
    for _, _, value in labels:
        assert value in text, (category, value)
    return {
        "id": f"g{_counter:04d}",
        "category": category,
        "text": text,
        "labels": [{"scanner": s, "type": t, "value": v} for s, t, v in labels],
    }


def build() -> list[dict[str, object]]:
    return secret_items() + pii_items() + hard_negative_items() + clean_items()


def main() -> None:
    items = build()
    with OUT.open("w", encoding="utf-8") as fh:
        for item in items:
            fh.write(json.dumps(item, ensure_ascii=False) + "\n")
    print(f"wrote {len(items)} items to {OUT}")


if __name__ == "__main__":
    main()
