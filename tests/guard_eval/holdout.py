"""Builds holdout.jsonl: hand-written prompts in contexts the main set does not use, scored once, not tuned on.

The numbers from this set are reported as measured on its first run (see bench/guard_eval.py
--dataset); it contains known misses on purpose (tokens in command-line flags, Doppler service
tokens, Twilio tokens passed positionally, national phone formats outside the configured region,
"name at domain dot com" e-mails). `python -m tests.guard_eval.holdout` rewrites the file.
"""

from __future__ import annotations

import base64
import json
import random
import string
from pathlib import Path

import phonenumbers

OUT = Path(__file__).with_name("holdout.jsonl")
rng = random.Random(7)
A = string.ascii_letters + string.digits
U = A + "_-"
H = "0123456789abcdef"


def r(alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def valid_phone(region: str) -> phonenumbers.PhoneNumber:
    example = phonenumbers.example_number(region)
    assert example is not None
    while True:
        n = str(example.national_number)
        num = phonenumbers.parse(f"+{example.country_code}{n[:-4]}{r(string.digits, 4)}", None)
        if phonenumbers.is_valid_number(num):
            return num


def intl(region: str) -> str:
    return phonenumbers.format_number(valid_phone(region), phonenumbers.PhoneNumberFormat.INTERNATIONAL)


def national(region: str) -> str:
    return phonenumbers.format_number(valid_phone(region), phonenumbers.PhoneNumberFormat.NATIONAL)


AKIA = "AKIA" + r("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16)
AWS_SECRET = r(A + "/+", 40)
JWT_HEADER = base64.urlsafe_b64encode(b'{"alg":"RS256","kid":"k1","typ":"JWT"}').decode().rstrip("=")
JWT_BODY = base64.urlsafe_b64encode(b'{"sub":"u_81723","exp":1767225600,"role":"admin"}').decode().rstrip("=")
JWT = f"{JWT_HEADER}.{JWT_BODY}.{r(U, 86)}"
K8S_PW = base64.b64encode(b"Vx7!pq92Lm").decode()
PEM_BODY = "\\n".join(r(A + "+/", 64) for _ in range(6))
SAS_SIG = r(A, 30) + "%2B" + r(A, 10) + "%2F" + r(A, 3) + "%3D"
TW_SID, TW_TOKEN = "AC" + r(H, 32), r(H, 32)

SECRETS = {
    "ghp": "ghp_" + r(A, 36),
    "glpat": "glpat-" + r(U, 20),
    "sk_proj": "sk-proj-" + r(U, 74) + "T3BlbkFJ" + r(U, 74),
    "sk_legacy": "sk-" + r(A, 20) + "T3BlbkFJ" + r(A, 20),
    "xoxb": f"xoxb-{r(string.digits, 12)}-{r(string.digits, 13)}-{r(A, 24)}",
    "npm": "npm_" + r(A, 36),
    "pypi": "pypi-AgEIcHlwaS5vcmc" + r(U, 140),
    "stripe": "sk_live_" + r(A, 99),
    "ant": "sk-ant-api03-" + r(U, 93) + "AA",
    "hf": "hf_" + r(string.ascii_letters, 34),
    "gmaps": "AIza" + r(U, 35),
    "sendgrid": "SG." + r(U, 22) + "." + r(U, 43),
    "github_pat": "github_pat_" + r(A, 22) + "_" + r(A, 59),
    "vault": "hvs." + r(U, 95),
    "dapi": "dapi" + r(H, 32),
    "mailgun": "key-" + r(H, 32),
    "discord_hook": f"discord.com/api/webhooks/{r(string.digits, 19)}/{r(U, 68)}",
    "doppler": f"dp.st.prd.{r(A, 40)}",
    "db_pw": "Pa55w0rd!" + r(A, 4),
    "prose_pw": "BlueFalcon#" + r(string.digits, 2),
    "mysql_pw": "S3cr3t" + r(A, 6),
    "pg_pw": "Zx9!" + r(A, 8),
    "tf_secret": r(A + "/+", 40),
    "basic": base64.b64encode(b"admin:" + r(A, 12).encode()).decode(),
    "tg": f"{r(string.digits, 10)}:AA{r(U, 33)}",
}
S = SECRETS

POSITIVE_SECRETS: list[tuple[str, list[tuple[str, str]]]] = [
    (
        f'provider "aws" {{\n  region     = "us-east-1"\n  access_key = "{AKIA}"\n'
        f'  secret_key = "{S["tf_secret"]}"\n}}',
        [("aws-access-key-id", AKIA), ("generic", S["tf_secret"])],
    ),
    (
        f"apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\ntype: Opaque\ndata:\n  password: {K8S_PW}",
        [("password", K8S_PW)],
    ),
    (
        f'import os\nos.environ["OPENAI_API_KEY"] = "{S["sk_proj"]}"\nfrom openai import OpenAI',
        [("openai", S["sk_proj"])],
    ),
    (f"hey can you use {S['xoxb']} for the standup bot? it's the one Priya made", [("slack", S["xoxb"])]),
    (
        'sqlalchemy.exc.OperationalError: (psycopg2.OperationalError) connection to server at "db" failed\n'
        f"[SQL: engine=create_engine('postgresql://orders:{S['db_pw']}@db:5432/orders')]",
        [("url-password", S["db_pw"])],
    ),
    (f"//registry.npmjs.org/:_authToken={S['npm']}\nalways-auth=true", [("npm", S["npm"])]),
    (f"[pypi]\nusername = __token__\npassword = {S['pypi']}", [("pypi", S["pypi"])]),
    (f"echo {S['ghp']} | docker login ghcr.io -u octo --password-stdin", [("github", S["ghp"])]),
    (f"git remote set-url origin https://oauth2:{S['glpat']}@gitlab.com/group/app.git", [("gitlab", S["glpat"])]),
    (f"curl https://api.stripe.com/v1/charges -u {S['stripe']}: -d amount=2000", [("stripe", S["stripe"])]),
    (f'client = anthropic.Anthropic(\n    api_key="{S["ant"]}",\n)', [("anthropic", S["ant"])]),
    (f"huggingface-cli login --token {S['hf']}", [("huggingface", S["hf"])]),
    (
        f'<script src="https://maps.googleapis.com/maps/api/js?key={S["gmaps"]}&callback=init"></script>',
        [("google", S["gmaps"])],
    ),
    (f"SENDGRID_API_KEY='{S['sendgrid']}'", [("sendgrid", S["sendgrid"])]),
    (f"from twilio.rest import Client\nclient = Client('{TW_SID}', '{TW_TOKEN}')", [("twilio-auth", TW_TOKEN)]),
    (f"Cookie: theme=dark; session={JWT}; lang=en", [("jwt", JWT)]),
    (
        '{\n  "type": "service_account",\n  "project_id": "acme-prod",\n'
        '  "private_key": "-----BEGIN PRIVATE KEY-----\\n'
        + PEM_BODY
        + '\\n-----END PRIVATE KEY-----\\n",\n  "client_email": "svc@acme-prod.iam.gserviceaccount.com"\n}',
        [("private-key", "-----BEGIN PRIVATE KEY-----"), ("pii:email", "svc@acme-prod.iam.gserviceaccount.com")],
    ),
    (
        "https://acmedata.blob.core.windows.net/exports/q3.csv?sv=2022-11-02&ss=b&srt=o&sp=r"
        f"&se=2025-01-01T00:00:00Z&spr=https&sig={SAS_SIG}",
        [("azure-sas", SAS_SIG)],
    ),
    (f"alerts go to https://{S['discord_hook']}", [("discord", S["discord_hook"])]),
    (f"MAILGUN_API_KEY={S['mailgun']}", [("mailgun", S["mailgun"])]),
    (f"the wifi password is {S['prose_pw']} if anyone asks", [("password", S["prose_pw"])]),
    (f"mysql -u root -p{S['mysql_pw']} -h db.internal orders < dump.sql", [("mysql-flag", S["mysql_pw"])]),
    (f"PGPASSWORD={S['pg_pw']} psql -h db -U app -c 'select 1'", [("pg-env", S["pg_pw"])]),
    (f"Authorization: Basic {S['basic']}", [("basic-auth", S["basic"])]),
    (
        f"s3 = boto3.client('s3', aws_access_key_id='{AKIA}', aws_secret_access_key='{AWS_SECRET}')",
        [("aws-access-key-id", AKIA), ("aws-secret", AWS_SECRET)],
    ),
    (f"      - name: release\n        env:\n          GH_TOKEN: {S['github_pat']}", [("github", S["github_pat"])]),
    (f"why is {S['sk_legacy']} returning insufficient_quota?", [("openai", S["sk_legacy"])]),
    (f"export VAULT_TOKEN={S['vault']}", [("vault", S["vault"])]),
    (f"databricks configure --host https://adb-1.azuredatabricks.net --token {S['dapi']}", [("databricks", S["dapi"])]),
    (f"DOPPLER_TOKEN={S['doppler']}", [("doppler", S["doppler"])]),
    (f"https://api.telegram.org/bot{S['tg']}/getUpdates returns 401", [("telegram", S["tg"])]),
]

NEGATIVE_SECRETS = [
    "Keys look like sk-proj-abc123... and should never be committed.",
    "secret_key = var.aws_secret_key\naccess_key = var.aws_access_key",
    "env:\n  - name: DB_PASSWORD\n    valueFrom:\n      secretKeyRef:\n        name: db\n        key: password",
    "Host key fingerprint is SHA256:nThbg6kXUpJWGl7E1IGOCspRomTxdCARLviKw6E5SY8.",
    "version https://git-lfs.github.com/spec/v1\n"
    "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 12345",
    "requests==2.32.3 \\\n    --hash=sha256:70761cfe03c773ceb22aa2f671b4757976145175cdfca038c02654d061d6dcc6",
    '{"token": "<redacted>", "expires_in": 3600}',
    'curl -H "Authorization: Bearer ${TOKEN}" https://api.example.com',
    "api_key = settings.OPENAI_KEY",
    "var a=function(e,t){return e.x1Bq9Kz+t.Zk3Wm7Pq};module.exports={a:a,b:c1d2e3}",
    '"apiVersion": "2023-05-01", "kind": "Secret", "type": "Opaque"',
    "The secret to good soup is patience, and the key is fresh stock.",
    "Your verification code is 482913. It expires in 10 minutes.",
    "password: !vault |\n          $ANSIBLE_VAULT;1.1;AES256\n          6231343736386337",
    "AWS_SECRET_ACCESS_KEY is read from ~/.aws/credentials; never hardcode it.",
    'The JWT header eyJhbGciOiJIUzI1NiJ9 decodes to {"alg":"HS256"}.',
    "Set token_expiry_seconds: 86400 and refresh_token_rotation: true",
    "model_id: anthropic.claude-3-5-sonnet-20240620-v1:0",
    "checksum_key = 'ab12cd34ef56ab12cd34ef56ab12cd34'",
    "GOOGLE_APPLICATION_CREDENTIALS=/secrets/gcp/service-account.json",
]

FR_IBAN = "FR76 3000 6000 0112 3456 7890 189"
PHONES = {k: intl(k) for k in ("FR", "DE", "GB", "IN", "US", "SG", "MX")}
DE_NATIONAL = national("DE")
US_NATIONAL = national("US")
POSITIVE_PII: list[tuple[str, list[tuple[str, str]]]] = [
    (
        "id,name,email,phone\n17,Jane Roe,jane.roe@example.net," + PHONES["US"],
        [("email", "jane.roe@example.net"), ("phone", PHONES["US"])],
    ),
    (
        '{"user": {"id": 981, "mail": "k.tanaka@firm.co.jp", "tel": "' + PHONES["SG"] + '"}}',
        [("email", "k.tanaka@firm.co.jp"), ("phone", PHONES["SG"])],
    ),
    (
        "Hi support, my order never arrived. Please call me back on " + US_NATIONAL + ". Thanks, Maria",
        [("phone", US_NATIONAL)],
    ),
    (
        "Bonjour, voici mon numéro: " + PHONES["FR"] + " et mon IBAN " + FR_IBAN,
        [("phone", PHONES["FR"]), ("iban", FR_IBAN)],
    ),
    ("Ruf mich an: " + DE_NATIONAL, [("phone", DE_NATIONAL)]),
    ("WhatsApp " + PHONES["IN"] + " for the delivery slot", [("phone", PHONES["IN"])]),
    ("Mexico office: " + PHONES["MX"], [("phone", PHONES["MX"])]),
    ("UK desk " + PHONES["GB"] + ", ask for Tom", [("phone", PHONES["GB"])]),
    ("Please charge 378282246310005 (Amex) for the annual plan", [("credit_card", "378282246310005")]),
    ("card: 5555-5555-5555-4444, name on card: J ROE", [("credit_card", "5555-5555-5555-4444")]),
    (
        "Visa 4012 8888 8888 1881 expired, use the Discover 6011 0009 9013 9424 instead",
        [("credit_card", "4012 8888 8888 1881"), ("credit_card", "6011 0009 9013 9424")],
    ),
    ("Überweisung an DE44 5001 0517 5407 3249 31 bitte bis Freitag", [("iban", "DE44 5001 0517 5407 3249 31")]),
    ("IBAN: GB33BUKB20201555555555", [("iban", "GB33BUKB20201555555555")]),
    ("Employee SSN 536-90-4399 needs correction in payroll", [("ssn", "536-90-4399")]),
    ("ssn: 219 44 7805", [("ssn", "219 44 7805")]),
    ("Accepted publickey for deploy from 185.199.108.153 port 50112", [("ip_address", "185.199.108.153")]),
    ("X-Forwarded-For: 2a02:26f0:fd::5c7a:10b3, 10.0.0.7", [("ip_address", "2a02:26f0:fd::5c7a:10b3")]),
    ("D.O.B.: 07/04/1976\nBlood type: A+", [("date_of_birth", "07/04/1976")]),
    ("She was born on March 3, 1992 in Leeds.", [("date_of_birth", "March 3, 1992")]),
    ("Geburtsdatum: 23.11.1968", [("date_of_birth", "23.11.1968")]),
    ("Send the contract to 350 Fifth Avenue, New York, NY 10118", [("street_address", "350 Fifth Avenue")]),
    ("HQ: 1 Infinite Loop, Cupertino, CA 95014", [("street_address", "1 Infinite Loop")]),
    ("Meet at 10 Downing Street at noon", [("street_address", "10 Downing Street")]),
    ("mailto:press@northwind-traders.com?subject=Interview", [("email", "press@northwind-traders.com")]),
    ('cc: "Dr. Ana Lima" <ana.lima+board@hospital-sp.org.br>', [("email", "ana.lima+board@hospital-sp.org.br")]),
    ("reach me at jane dot roe at example dot com", [("email", "jane dot roe at example dot com")]),
]

NEGATIVE_PII = [
    "Visa ending in 4242 was charged $12.00 on 2024-05-02.",
    "Barcodes: 4006381333931, 5901234123457, 4012345678901",
    "ISBN-13 9780306406157 is the classic example.",
    "Room 101, desk 7, locker 2210.",
    "SSN 078-05-1120 is the famous Woolworth wallet number.",
    "DOB 1990-02-30 was rejected because February has no 30th.",
    "Gateway 192.168.1.1, DNS 10.0.0.53, link-local fe80::a00:27ff:fe4e:66a1",
    "Upgrade from 2.4.1.0 to 2.5.0.3 requires a restart.",
    "Color #3a7bd5 and rgba(58, 123, 213, 0.5)",
    "We shipped 1,204,332 units in FY2023 (order ids 7783-2231-0098 and 7783-2231-0099).",
    "Meeting moved to 04/05/2025 14:00 CET.",
    "The @types/node package and @angular/core@17.0.1 were updated.",
    "Matrix dims 1024 x 768 x 3, batch 64, lr 3e-4",
    "Call the function at line 1337 of handler.py",
    "Born in the USA is a 1984 album.",
    "Route 66 and Interstate 95 both cross the state.",
    "Error 0x80070005: access denied (HRESULT).",
    "Tracking: 9400 1000 0000 0000 0000 00 (USPS)",
]


def main() -> None:
    items: list[dict[str, object]] = []

    def add(cat: str, text: str, labels: list[tuple[str, str, str]]) -> None:
        for _, _, value in labels:
            assert value in text, (cat, value)
        items.append(
            {
                "id": f"h{len(items) + 1:03d}",
                "category": cat,
                "text": text,
                "labels": [{"scanner": s, "type": t, "value": v} for s, t, v in labels],
            }
        )

    for text, labels in POSITIVE_SECRETS:
        add("secret", text, [("pii", t[4:], v) if t.startswith("pii:") else ("secrets", t, v) for t, v in labels])
    for text in NEGATIVE_SECRETS:
        add("neg/secret", text, [])
    for text, labels in POSITIVE_PII:
        add("pii", text, [("pii", t, v) for t, v in labels])
    for text in NEGATIVE_PII:
        add("neg/pii", text, [])
    with OUT.open("w", encoding="utf-8") as fh:
        for item in items:
            fh.write(json.dumps(item, ensure_ascii=False) + "\n")
    print(f"wrote {len(items)} items to {OUT}")


if __name__ == "__main__":
    main()
