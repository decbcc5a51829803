"""Log in, log out and change the password on the console's own pages (Django's auth views, our templates)."""
import pytest
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.test import Client

from pages_support import PASSWORD, assert_strict_page, client_for, researcher

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _no_login_counts():
    """Forget failed-login counts (console.logins keeps them in Redis across tests and runs)."""
    cache.clear()


def test_the_login_page_renders_strict_and_logging_in_leads_to_the_study_list():
    researcher("ada", password=PASSWORD)
    client = Client()
    page = client.get("/console/login/")
    assert page.status_code == 200
    html = assert_strict_page(page)
    assert 'name="username"' in html and 'name="password"' in html and "csrfmiddlewaretoken" in html
    response = client.post("/console/login/", {"username": "ada", "password": PASSWORD})
    assert response.status_code == 302 and response.headers["Location"] == "/console/"
    assert client.get("/console/").status_code == 200


def test_a_wrong_password_shows_an_error_and_logs_nobody_in():
    researcher("ada", password=PASSWORD)
    client = Client()
    response = client.post("/console/login/", {"username": "ada", "password": "wrong"})
    assert response.status_code == 200
    assert "Please enter a correct username and password" in assert_strict_page(response)
    assert client.get("/console/").status_code == 302


def test_an_anonymous_visitor_is_sent_to_the_login_page_and_back():
    response = Client().get("/console/")
    assert response.status_code == 302
    assert response.headers["Location"] == "/console/login/?next=/console/"


def test_logout_takes_a_post_and_ends_the_session():
    client = client_for(researcher("ada", password=PASSWORD))
    assert client.get("/console/logout/").status_code == 405  # a link or an image cannot log anyone out
    response = client.post("/console/logout/")
    assert response.status_code == 302 and response.headers["Location"] == "/console/login/"
    assert client.get("/console/").status_code == 302


def test_the_nav_has_a_logout_form_and_the_admin_link_only_for_superusers():
    html = assert_strict_page(client_for(researcher("ada", password=PASSWORD)).get("/console/"))
    assert 'action="/console/logout/"' in html and "/admin/" not in html
    html = assert_strict_page(client_for(researcher("root", is_superuser=True, is_staff=True)).get("/console/"))
    assert 'href="/admin/"' in html


def test_a_researcher_changes_their_password():
    user = researcher("ada", password=PASSWORD)
    client = client_for(user)
    page = client.get("/console/password/")
    assert page.status_code == 200
    assert_strict_page(page)
    bad = client.post("/console/password/", {"old_password": "nope", "new_password1": "x", "new_password2": "y"})
    assert bad.status_code == 200 and "errors" in bad.content.decode()
    new = "another-long-password-77"
    response = client.post("/console/password/", {
        "old_password": PASSWORD, "new_password1": new, "new_password2": new,
    })
    assert response.status_code == 302 and response.headers["Location"] == "/console/password/done/"
    assert_strict_page(client.get("/console/password/done/"))  # still logged in on this browser
    assert get_user_model().objects.get(pk=user.pk).check_password(new)
