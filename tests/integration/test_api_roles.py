import pytest


@pytest.mark.parametrize("i", range(20))
def test_x(client, org, auth, i):
    assert client.get("/api/v1/leads", headers=auth["alice"]).status_code == 200
