"""shellsecrets: credentials in a command line hidden, the rest left as written."""

from __future__ import annotations

import pytest

from hoopy.shellsecrets import hidden

CASES = [
    ("PGPASSWORD=s3cr3t psql -h db", "PGPASSWORD=**** psql -h db", "s3cr3t"),
    ("env AWS_SECRET_ACCESS_KEY='abc def' aws s3 ls",
     "env AWS_SECRET_ACCESS_KEY='****' aws s3 ls", "abc def"),
    ('export GITHUB_TOKEN="gh\\"p"; gh api', 'export GITHUB_TOKEN="****"; gh api', 'gh\\"p'),
    ("mysql --password=hunter2 -u root", "mysql --password=**** -u root", "hunter2"),
    ("kubectl --token abc get pods", "kubectl --token **** get pods", "abc"),
    ("vault login -method=userpass --db-password x1",
     "vault login -method=userpass --db-password ****", "x1"),
    ("curl -u bob:pw1 https://x", "curl -u bob:**** https://x", "pw1"),
    ("curl --user=bob:pw1 https://x", "curl --user=bob:**** https://x", "pw1"),
    ('curl -H "Authorization: Bearer tok123" https://x',
     'curl -H "Authorization: Bearer ****" https://x', "tok123"),
    ("git clone https://bob:pw2@github.com/r", "git clone https://bob:****@github.com/r", "pw2"),
    ("psql postgresql://u:pw3@db/x -c 'select 1'",
     "psql postgresql://u:****@db/x -c 'select 1'", "pw3"),
    ("a=1 DB_PASS=x2|cat", "a=1 DB_PASS=****|cat", "x2"),
]  # fmt: skip


@pytest.mark.parametrize(("line", "shown", "secret"), CASES)
def test_credential_hidden_rest_as_written(line: str, shown: str, secret: str) -> None:
    out, secrets = hidden(line)
    assert out == shown
    assert secret in secrets


@pytest.mark.parametrize(
    "line",
    ["ls -la", "cd /tmp; PWD=/x ls", "sort -u file", "echo https://example.com/a",
     "grep -r password .", "cat ~/.ssh/known_hosts", "OLDPWD=/a cd -"],
)  # fmt: skip
def test_nothing_to_hide_is_left_alone(line: str) -> None:
    assert hidden(line) == (line, ())
