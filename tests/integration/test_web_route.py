"""The web page's route: `/` and `/web/{name}`, their types and headers, and nothing else served from disk."""

from __future__ import annotations

import re

import pytest

from service.api.routes_web import CONTENT_SECURITY_POLICY, WEB_DIR, WEB_FILES


def test_the_page_is_html_under_a_strict_policy_and_needs_no_key(make_client) -> None:
    client = make_client(api_keys="alpha")  # the page must load to ask for the key
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert page.headers["x-content-type-options"] == "nosniff"
    assert '<script src="/web/app.js" defer></script>' in page.text
    assert '<link rel="stylesheet" href="/web/app.css">' in page.text


@pytest.mark.parametrize(("name", "content_type"), [("app.js", "text/javascript"), ("app.css", "text/css")])
def test_script_and_style_have_their_types(make_client, name: str, content_type: str) -> None:
    response = make_client().get(f"/web/{name}")
    assert response.status_code == 200
    assert response.headers["content-type"] == f"{content_type}; charset=utf-8"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.content == (WEB_DIR / name).read_bytes()


@pytest.mark.parametrize(
    "path",
    [
        "/web/nothing.js",
        "/web/index.htm",
        "/web/..%2Fapp.py",
        "/web/..%2F..%2Fcore%2Fsettings.py",
        "/web/%2e%2e",
        "/web/routes_web.py",
        "/web/",
    ],
)
def test_nothing_else_is_served(make_client, path: str) -> None:
    response = make_client().get(path)
    assert response.status_code == 404, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["code"] == "not_found"
    assert "import" not in response.text


def test_the_page_stays_out_of_the_openapi_schema(make_client) -> None:
    paths = make_client().get("/openapi.json").json()["paths"]
    assert "/" not in paths
    assert not [path for path in paths if path.startswith("/web")]


def test_the_files_load_nothing_from_elsewhere_and_run_nothing_inline() -> None:
    html = (WEB_DIR / "index.html").read_text()
    assert sorted(WEB_FILES) == sorted(path.name for path in WEB_DIR.iterdir())
    assert re.findall(r"<script\b[^>]*>", html) == ['<script src="/web/app.js" defer>']
    assert "<style" not in html
    assert not re.search(r"\sstyle=|\son[a-z]+=", html), "inline styles and handlers break the policy"
    for name in WEB_FILES:
        assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", (WEB_DIR / name).read_text()), name
    # The page shows prompts and error messages as text, never parsed as markup.
    script = (WEB_DIR / "app.js").read_text()
    assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write", script)
