#!/usr/bin/env python3
"""Builds corpus.jsonl, the labeled samples that redaction is measured on, from the test suites
of public scanners and recognizers (their sources and licenses are in README.md).

Usage: build.py PRESIDIO_GIT_DIR DETECT_SECRETS_GIT_DIR GITLEAKS_GIT_DIR EMAIL_VALIDATOR_GIT_DIR
                > corpus.jsonl

Each argument is a git checkout or bare repository of that project, read at the commit named in
README.md. Python's `phonenumbers` (the Python port of libphonenumber) and `detect-secrets`
must be installed: the first gives libphonenumber's example numbers, the second reads
detect-secrets' own test modules, whose cases are computed when they are imported.

A line is one sample:
  {"kind": K, "text": T, "values": [V, ...], "source": S}  a positive: every V must vanish
  {"kind": "none", "near": K, "text": T, "source": S}       a look-alike: T must stay as it is
"""
import ast
import importlib.util
import json
import random
import re
import subprocess
import sys
import tempfile

PRESIDIO_COMMIT = "0aa9f8e44"
DETECT_SECRETS_COMMIT = "5e14193"
GITLEAKS_COMMIT = "b58d3f10"
EMAIL_VALIDATOR_COMMIT = "b73d010"


def show(git_dir, commit, path):
    return subprocess.run(["git", "--git-dir", git_dir, "show", f"{commit}:{path}"],
                          check=True, capture_output=True, text=True).stdout


def emit(sample):
    print(json.dumps(sample, ensure_ascii=False, sort_keys=True))


# Presidio's pattern recognizers: each test's parametrized (text, count, positions) cases.
PRESIDIO = {
    "email": "test_email_recognizer.py",
    "phone": "test_phone_recognizer.py",
    "ssn": "test_us_ssn_recognizer.py",
    "ip": "test_ip_recognizer.py",
    "iban": "test_iban_recognizer.py",
    "card": "test_credit_card_recognizer.py",
}


def parametrized_cases(source):
    """(argnames, [case tuple]) of every @pytest.mark.parametrize with literal cases."""
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or len(node.args) < 2:
            continue
        func = node.func
        if not (isinstance(func, ast.Attribute) and func.attr == "parametrize"):
            continue
        try:
            names = ast.literal_eval(node.args[0])
            cases = ast.literal_eval(node.args[1])
        except ValueError:
            continue
        if isinstance(names, str):
            names = [n.strip() for n in names.split(",")]
        yield names, cases


def presidio(git_dir):
    for kind, test in PRESIDIO.items():
        path = f"presidio-analyzer/tests/{test}"
        for names, cases in parametrized_cases(show(git_dir, PRESIDIO_COMMIT, path)):
            if "expected_len" not in names:
                continue
            text_at = 0
            count_at = names.index("expected_len")
            spans_at = next((names.index(n) for n in ("expected_positions", "expected_res")
                             if n in names), None)
            for case in cases:
                text, count = case[text_at], case[count_at]
                source = f"presidio {test}"
                if count == 0:
                    emit({"kind": "none", "near": kind, "text": text, "source": source})
                    continue
                spans = case[spans_at] if spans_at is not None else ()
                values = [text[s:e] for s, e in spans if isinstance(s, int)]
                if len(values) != count:
                    continue  # spans not given per match: can't say what must vanish
                emit({"kind": kind, "text": text, "values": values, "source": source})


# detect-secrets: each plugin test's (payload, should_flag) cases; the value that must vanish is
# the secret the plugin itself reports in the payload.
DETECT_SECRETS_PLUGINS = [
    "artifactory", "aws_key", "azure_storage_key", "basic_auth", "cloudant", "discord",
    "github_token", "gitlab_token", "ibm_cloud_iam", "ibm_cos_hmac", "jwt", "mailchimp_key",
    "npm", "openai", "pypi_token", "sendgrid", "slack", "softlayer", "square_oauth", "stripe",
    "telegram_token", "twilio",
]


def detect_secrets(git_dir):
    from detect_secrets.core.scan import scan_line
    from detect_secrets.settings import default_settings
    with tempfile.TemporaryDirectory() as folder:
        for plugin in DETECT_SECRETS_PLUGINS:
            path = f"tests/plugins/{plugin}_test.py"
            try:
                source = show(git_dir, DETECT_SECRETS_COMMIT, path)
            except subprocess.CalledProcessError:
                continue
            for names, cases in parametrized_cases(source):
                if names[:2] != ["payload", "should_flag"]:
                    continue
                kind = "jwt" if plugin == "jwt" else "secret"
                for payload, should_flag, *_ in cases:
                    source_name = f"detect-secrets {path}"
                    if not should_flag:
                        # A plugin's negative is a look-alike only if detect-secrets as a whole
                        # (every plugin) leaves it alone too.
                        with default_settings():
                            if not list(scan_line(payload)):
                                emit({"kind": "none", "near": kind, "text": payload,
                                      "source": source_name})
                        continue
                    with default_settings():
                        found = {s.secret_value for s in scan_line(payload) if s.secret_value}
                    if found:
                        emit({"kind": kind, "text": payload, "values": sorted(found),
                              "source": source_name})
        # The keyword plugin's cases are module-level lists of (line, secret or None).
        path = "tests/plugins/keyword_test.py"
        module_path = f"{folder}/keyword_test.py"
        with open(module_path, "w") as f:
            f.write(show(git_dir, DETECT_SECRETS_COMMIT, path))
        spec = importlib.util.spec_from_file_location("keyword_test", module_path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        for name in dir(module):
            if not name.endswith("_TEST_CASES"):
                continue
            for line, secret in getattr(module, name):
                if len(line) > 1000:
                    continue
                source_name = f"detect-secrets {path} {name}"
                if secret is None:
                    # The keyword plugin's negatives depend on the file type it is told (quotes
                    # required in some); a look-alike is one that no plugin flags in any.
                    with default_settings():
                        if not list(scan_line(line)):
                            emit({"kind": "none", "near": "secret", "text": line,
                                  "source": source_name})
                else:
                    emit({"kind": "secret", "text": line, "values": [secret], "source": source_name})


# National formats only for the regions whose users write to the assistant most; elsewhere a
# national number alone (say, seven digits) can't be told from any other number.
NATIONAL_REGIONS = ["US", "CA", "GB", "DE", "FR", "IT", "ES", "NL", "IN", "BR", "MX", "JP", "AU",
                    "KR", "TR", "PL", "SE", "CH", "AR", "ZA"]
PHONE_TEMPLATES = [
    "You can reach me on {} after six.",
    "call {}",
    "My number is {}, text first please",
    "Tel: {}",
    "phone={}",
    "(mobile: {})",
]


def libphonenumber_examples():
    """Every region's example numbers of the common types, as people write them: in the
    international format and E.164, and in the national format for NATIONAL_REGIONS."""
    import phonenumbers
    from phonenumbers import PhoneNumberFormat, PhoneNumberType
    types = [PhoneNumberType.FIXED_LINE, PhoneNumberType.MOBILE, PhoneNumberType.TOLL_FREE]
    styles = [("international", PhoneNumberFormat.INTERNATIONAL), ("e164", PhoneNumberFormat.E164),
              ("national", PhoneNumberFormat.NATIONAL)]
    count = 0
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for number_type in types:
            number = phonenumbers.example_number_for_type(region, number_type)
            if number is None:
                continue
            for style, format_ in styles:
                if style == "national" and region not in NATIONAL_REGIONS:
                    continue
                value = phonenumbers.format_number(number, format_)
                text = PHONE_TEMPLATES[count % len(PHONE_TEMPLATES)].format(value)
                count += 1
                emit({"kind": "phone", "text": text, "values": [value],
                      "source": f"libphonenumber example number {region} {style}"})


# gitleaks: each rule's sample secrets (GenerateSampleSecrets(identifier, secret)), generated
# here from the same expressions with a fixed seed and written in a few of the syntaxes people
# paste; and each rule's false positives (`fps`), which must stay.
GITLEAKS_PATTERNS = {
    "utils.Numeric": "[0-9]{%s}",
    "utils.Hex": "[a-f0-9]{%s}",
    "utils.AlphaNumeric": "[a-z0-9]{%s}",
    "utils.AlphaNumericExtendedShort": "[a-z0-9_-]{%s}",
    "utils.AlphaNumericExtended": "[a-z0-9=_\\-]{%s}",
    "utils.AlphaNumericExtendedLong": "[a-z0-9\\/=_\\+\\-]{%s}",
}
SECRET_TEMPLATES = [
    "{I}_TOKEN={s}",
    'export {I}_API_KEY="{s}"',
    '{{"{i}_token": "{s}"}}',
    "{i}_token: {s}",
    '{i}Token := "{s}"',
    "{i}_key = '{s}'",
    'const {i}Token = "{s}";',
    "here is my {i} token {s} can you see why the request fails?",
]


def go_literals(text):
    """The Go string literals of `text`, in order (raw and interpreted)."""
    out = []
    for raw, quoted in re.findall(r'`([^`]*)`|"((?:[^"\\]|\\.)*)"', text):
        out.append(raw if raw or not quoted else bytes(quoted, "utf-8").decode("unicode_escape"))
    return out


def split_top(expression, separator):
    depth, start, parts, quote = 0, 0, [], None
    for at, c in enumerate(expression):
        if quote:
            if c == quote and expression[at - 1] != "\\":
                quote = None
        elif c in "`\"":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == separator and depth == 0:
            parts.append(expression[start:at].strip())
            start = at + 1
    parts.append(expression[start:].strip())
    return parts


def go_regex(expression):
    """A regex expression of the rules (literals and utils helpers joined by +), or None."""
    out = ""
    for term in split_top(expression, "+"):
        literal = re.fullmatch(r'`([^`]*)`|"((?:[^"\\]|\\.)*)"', term)
        helper = re.fullmatch(r'(utils\.\w+)\("(\d+)"\)', term)
        if literal:
            out += literal.group(1) if literal.group(1) is not None else literal.group(2).replace("\\\\", "\\")
        elif helper and helper.group(1) in GITLEAKS_PATTERNS:
            out += GITLEAKS_PATTERNS[helper.group(1)] % helper.group(2)
        elif term == "utils.Hex8_4_4_4_12()":
            out += "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
        else:
            return None
    return out


def generate(pattern, rng):
    """A random string matching `pattern`: literals, escapes, classes and {n} or {n,m}."""
    out, at = [], 0
    while at < len(pattern):
        c = pattern[at]
        if c == "[":
            end = pattern.index("]", at + 1)
            while pattern[end - 1] == "\\":
                end = pattern.index("]", end + 1)
            body, choices, i = pattern[at + 1:end], [], 0
            while i < len(body):
                ch = body[i]
                if ch == "\\" and i + 1 < len(body):
                    choices.append(body[i + 1]); i += 2; continue
                if i + 2 < len(body) and body[i + 1] == "-":
                    choices.extend(chr(x) for x in range(ord(ch), ord(body[i + 2]) + 1)); i += 3; continue
                choices.append(ch); i += 1
            atom, at = (lambda choices=choices: rng.choice(choices)), end + 1
        elif c == "\\":
            literal = pattern[at + 1]
            if literal.isalnum():
                raise ValueError(pattern)
            atom, at = (lambda literal=literal: literal), at + 2
        elif c in "()|?*+.^$":
            raise ValueError(pattern)
        else:
            atom, at = (lambda c=c: c), at + 1
        count = 1
        quantifier = re.match(r"\{(\d+)(?:,(\d+))?\}", pattern[at:])
        if quantifier:
            low, high = int(quantifier.group(1)), int(quantifier.group(2) or quantifier.group(1))
            count, at = rng.randint(low, high), at + quantifier.end()
        out.extend(atom() for _ in range(count))
    return "".join(out)


def gitleaks_secret(expression, rng):
    out = ""
    for term in split_top(expression, "+"):
        literal = re.fullmatch(r'`([^`]*)`|"((?:[^"\\]|\\.)*)"', term)
        generated = re.fullmatch(r"secrets\.NewSecret\((.*)\)", term, re.S)
        if literal:
            out += literal.group(1) if literal.group(1) is not None else literal.group(2)
        elif generated:
            pattern = go_regex(generated.group(1))
            if pattern is None:
                return None
            try:
                out += generate(pattern, rng)
            except (ValueError, IndexError):
                return None
        else:
            return None
    return out


def gitleaks_rules(git_dir):
    """Each rule of gitleaks' generated configuration whose regex Python can compile, by id,
    but its catch-all `generic-api-key`."""
    import tomllib
    config = tomllib.loads(show(git_dir, GITLEAKS_COMMIT, "config/gitleaks.toml"))
    rules = {}
    for rule in config.get("rules", []):
        if rule["id"] == "generic-api-key" or "regex" not in rule:
            continue
        try:
            rules[rule["id"]] = re.compile(rule["regex"].replace("\\z", "\\Z"))
        except re.error:
            pass
    return rules


def gitleaks(git_dir):
    rng = random.Random(7)
    rules = gitleaks_rules(git_dir)
    listing = subprocess.run(["git", "--git-dir", git_dir, "ls-tree", "--name-only", GITLEAKS_COMMIT,
                              "cmd/generate/config/rules/"], check=True, capture_output=True,
                             text=True).stdout.split()
    written = 0
    for path in listing:
        source = show(git_dir, GITLEAKS_COMMIT, path)
        name = f"gitleaks {path}"
        for call in re.finditer(r"GenerateSampleSecrets\(", source):
            depth, at = 1, call.end()
            while depth and at < len(source):
                depth += {"(": 1, ")": -1}.get(source[at], 0)
                at += 1
            args = split_top(source[call.end():at - 1], ",")
            if len(args) != 2:
                continue
            identifier = go_literals(args[0])
            secret = gitleaks_secret(args[1], rng)
            if not identifier or not secret or "\n" in secret:
                continue
            i = re.sub(r"[^a-z0-9]+", "_", identifier[0].lower()).strip("_") or "service"
            for k in range(3):
                template = SECRET_TEMPLATES[(written + 3 * k) % len(SECRET_TEMPLATES)]
                text = template.format(i=i, I=i.upper(), s=secret)
                emit({"kind": "secret", "text": text, "values": [secret], "source": name})
            written += 1
        # A rule's false positives are text that rule must not flag; one that another
        # (specific) rule flags is that rule's secret, not a look-alike, and is left out.
        own = set(re.findall(r'RuleID:\s*"([^"]+)"', source))
        for block in re.finditer(r"fps\s*:?=\s*\[\]string\{(.*?)\n\t\}", source, re.S):
            for literal in go_literals(block.group(1)):
                if not literal.strip() or len(literal) >= 1000:
                    continue
                if any(rule.search(literal) for id_, rule in rules.items() if id_ not in own):
                    continue
                emit({"kind": "none", "near": "secret", "text": literal, "source": name})


# python-email-validator: the addresses its syntax tests accept (each written into a sentence),
# and those it rejects for having no @-sign at all.
EMAIL_TEMPLATES = ["write to {} any time", "{}", "Contact: {}.", "cc {} on the thread"]


def email_validator(git_dir):
    path = "tests/test_syntax.py"
    tree = ast.parse(show(git_dir, EMAIL_VALIDATOR_COMMIT, path))
    count = 0
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "parametrize" and len(node.args) >= 2):
            continue
        try:
            names = ast.literal_eval(node.args[0])
        except ValueError:
            continue
        names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
        if not names or names[0] != "email_input" or not isinstance(node.args[1], ast.List):
            continue
        valid = len(names) > 1 and names[1] in ("output", "normalized_local_part")
        for case in node.args[1].elts:
            first = case.elts[0] if isinstance(case, ast.Tuple) else case
            if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
                continue
            address = first.value
            if "\n" in address or "\r" in address:
                continue
            if valid:
                text = EMAIL_TEMPLATES[count % len(EMAIL_TEMPLATES)].format(address)
                count += 1
                # A display name is kept; the address in angle brackets is what must go.
                named = re.fullmatch(r".*<(.+)>", address)
                emit({"kind": "email", "text": text, "values": [named.group(1) if named else address],
                      "source": f"python-email-validator {path}"})
            elif names[1:2] == ["error_msg"] and "@" not in address:
                emit({"kind": "none", "near": "email", "text": address,
                      "source": f"python-email-validator {path}"})


# Formats with published rules, generated with a fixed seed: the kinds the suites above hold
# few or none of, written as they are pasted into a chat.
def luhn_complete(prefix, length, rng):
    digits = [int(d) for d in prefix] + [rng.randint(0, 9) for _ in range(length - len(prefix) - 1)]
    total = 0
    for i, d in enumerate(reversed(digits)):
        d = d * 2 if i % 2 == 0 else d
        total += d - 9 if d > 9 else d
    return "".join(map(str, digits)) + str((10 - total % 10) % 10)


def generated():
    rng = random.Random(11)
    b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

    def body(lines):
        return [("".join(rng.choice(b64) for _ in range(64))) for _ in range(lines)]

    source = "generated by build.py"
    for label in ["RSA PRIVATE KEY", "PRIVATE KEY", "EC PRIVATE KEY", "OPENSSH PRIVATE KEY",
                  "ENCRYPTED PRIVATE KEY", "DSA PRIVATE KEY", "PGP PRIVATE KEY BLOCK"]:
        for cut in (False, True):
            lines = body(6)
            block = [f"-----BEGIN {label}-----", *lines]
            if not cut:
                block.append(f"-----END {label}-----")
            else:
                block = block[:5]  # pasted without its end
            kept = [line for line in block[1:] if not line.startswith("-----")]
            for before, after in (("here is the key:\n", "\nwhy does ssh reject it?"), ("", "")):
                emit({"kind": "private_key", "text": before + "\n".join(block) + after,
                      "values": kept, "source": f"{source}: {label}{' cut off' if cut else ''}"})

    def token(n, alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"):
        return "".join(rng.choice(alphabet) for _ in range(n))

    for _ in range(6):
        user, password, host = rng.choice(["app", "admin", "deploy", "svc_ro"]), token(16), \
            rng.choice(["db.internal", "10.0.3.7", "prod-db.example.com"])
        for text, value in [
            (f"DATABASE_URL=postgres://{user}:{password}@{host}:5432/orders", password),
            (f"mongodb+srv://{user}:{password}@{host}/test?retryWrites=true", password),
            (f"git clone https://{user}:{password}@github.com/acme/private.git", password),
            (f"redis://:{password}@{host}:6379/0", password),
            (f"Server={host};Database=orders;User Id={user};Password={password};", password),
            (f"curl -u {user}:{password} https://{host}/api/v1/items", password),
            (f"curl -H 'Authorization: Bearer {password}' https://api.example.com/v2/me", password),
            (f"Authorization: Basic {token(28)}=", None),
            (f"Authorization: token {password}", password),
            (f"-H \"X-API-Key: {password}\"", password),
        ]:
            if value is None:
                value = text.split("Basic ")[1]
            emit({"kind": "secret", "text": text, "values": [value], "source": f"{source}: credentials"})
    for _ in range(40):
        area = rng.choice([n for n in range(1, 900) if n != 666])
        ssn = f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"
        for text, value in [(f"my SSN is {ssn}", ssn), (f"SSN: {ssn.replace('-', ' ')}", ssn.replace("-", " ")),
                            (f"social security number {ssn.replace('-', '')}", ssn.replace("-", ""))]:
            emit({"kind": "ssn", "text": text, "values": [value], "source": f"{source}: US SSN"})
    issuers = [("4", 16), ("4", 13), ("51", 16), ("55", 16), ("2221", 16), ("2720", 16), ("34", 15),
               ("37", 15), ("6011", 16), ("65", 16), ("3528", 16), ("36", 14), ("62", 16)]
    for prefix, length in issuers:
        for style in range(3):
            number = luhn_complete(prefix, length, rng)
            if style == 1:
                value = " ".join(number[i:i + 4] for i in range(0, len(number), 4))
            elif style == 2:
                value = "-".join(number[i:i + 4] for i in range(0, len(number), 4))
            else:
                value = number
            emit({"kind": "card", "text": f"card {value} exp 04/29", "values": [value],
                  "source": f"{source}: card, issuer prefix {prefix}"})
    for _ in range(20):
        v4 = ".".join(str(rng.randint(1, 254)) for _ in range(4))
        v6 = ":".join(f"{rng.randint(0, 65535):x}" for _ in range(8))
        emit({"kind": "ip", "text": f"ssh root@{v4} -p 22", "values": [v4], "source": f"{source}: IPv4"})
        emit({"kind": "ip", "text": f"the server at {v6} drops packets", "values": [v6],
              "source": f"{source}: IPv6"})
    # Look-alikes that must stay.
    lookalikes = [
        "ISBN 978-3-16-148410-0", "ISBN-13: 9780306406157", "ISBN 0-306-40615-2",
        "EAN 4006381333931", "barcode 5901234123457", "order #1002345678901 shipped",
        "tweet id 1790432378463928410", "snowflake 175928847299117063",
        "uuid 123e4567-e89b-12d3-a456-426614174000", "request-id: 9f1c2d3e-4b5a-6789-0abc-def012345678",
        "version 1.24.3", "upgrade to v2.0.0-rc.1", "python 3.11.7", "node v20.20.2",
        "released 2024-03-15", "at 14:32:07", "2026-12-07T22:01:43Z", "timestamp 1733612503",
        "commit 5e14193a9c0d7e6f1b2a3c4d5e6f708192a3b4c5", "sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "color #1a2b3c", "price $1,299.99", "call stack depth 1024", "port 8080", "HTTP 404",
        "coordinates 48.8584, 2.2945", "lat 40.7128 lon -74.0060", "page 123 of 456",
        "GITHUB_API_KEY=\nDYNATRACE_API_KEY=", "password = \"\"", "password: ${DB_PASSWORD}",
        "api_key = os.environ[\"API_KEY\"]", "token = getenv(\"TOKEN\")", "password_length = 12",
        "secret_name = \"prod/db\"", "api_key: <YOUR_API_KEY>", "token: your-token-here",
        "password=xxxxxxxxxx", "the password field is required", "reset your password here",
        "I forgot my password again", "the secret to good bread is time",
        "room 1234-5678", "invoice 2024-000123", "phone extension 4412", "zip 94103",
        "it costs 1 234 567 rupees", "the year 1984", "population 8 336 817",
        "1 + 2 = 3", "x = 10.0.3", "matrix 3x4", "chmod 755 run.sh", "pid 48213",
        "the function sk_free() frees", "use AKIA as a prefix", "eyJ is base64 for {\"",
        "-----BEGIN CERTIFICATE-----", "ssh-rsa is the key type", "mail me at the office",
        "@mention the team",
    ]
    for text in lookalikes:
        emit({"kind": "none", "near": "any", "text": text, "source": f"{source}: look-alike"})


if __name__ == "__main__":
    presidio(sys.argv[1])
    detect_secrets(sys.argv[2])
    gitleaks(sys.argv[3])
    email_validator(sys.argv[4])
    libphonenumber_examples()
    generated()
