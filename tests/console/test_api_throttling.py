"""Rate limits: per token, per session user, and per IP for requests without valid credentials (Redis cache)."""
import pytest
from django.core.cache import cache

from api_support import Api, make_user, session_client, token_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def low_rates(settings):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK,
                               "DEFAULT_THROTTLE_RATES": {"token": "5/min", "user": "4/min", "anon": "3/min"}}
    cache.clear()
    yield
    cache.clear()


def test_each_token_has_its_own_limit(low_rates):
    ada = make_user("ada")
    first, second = Api(token_for(ada)), Api(token_for(ada))
    assert [first.get("/api/studies/")[0] for _ in range(5)] == [200] * 5
    response = first.client.get("/api/studies/", **first.headers)
    assert response.status_code == 429
    assert response.json()["code"] == "throttled" and 0 < int(response.headers["Retry-After"]) <= 60
    assert second.get("/api/studies/")[0] == 200  # another token of the same researcher is counted apart


def test_a_session_user_is_limited_too(low_rates):
    api = Api(client=session_client(make_user("ada")))
    assert [api.get("/api/tokens/")[0] for _ in range(5)] == [200] * 4 + [429]


def test_requests_without_valid_credentials_are_limited_per_ip(low_rates):
    # Guessing keys: every wrong key counts against the IP, then even the answer 401 stops.
    statuses = [Api("tb_guess").get("/api/studies/", REMOTE_ADDR="10.0.0.7")[0] for _ in range(4)]
    assert statuses == [401, 401, 401, 429]
    assert Api().get("/api/studies/", REMOTE_ADDR="10.0.0.7")[0] == 429  # no key at all: the same IP
    assert Api().get("/api/studies/", REMOTE_ADDR="10.0.0.8")[0] == 401  # another IP is counted apart
    # A made-up X-Forwarded-For does not give a fresh allowance (no proxy is trusted here).
    assert Api().get("/api/studies/", REMOTE_ADDR="10.0.0.7", HTTP_X_FORWARDED_FOR="1.2.3.4")[0] == 429
    ada = make_user("ada")
    assert Api(token_for(ada)).get("/api/studies/", REMOTE_ADDR="10.0.0.7")[0] == 200  # a valid token is not anon


def test_the_rates_come_from_settings():
    from django.conf import settings

    rates = settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]
    assert rates == {"token": "600/min", "user": "600/min", "anon": "120/min"}
