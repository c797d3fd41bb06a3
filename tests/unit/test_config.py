from pathlib import Path

import pytest

from foundation_etcd import Config, ConfigurationError, InvalidIdError

PEM = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def test_defaults_satisfy_timing_invariants() -> None:
    c = Config()
    assert c.endpoints == ("127.0.0.1:2379",)
    assert c.keepalive_interval == pytest.approx(10 / 6)
    assert c.step_down == pytest.approx(10 / 3)
    assert c.ttl > c.safe_step_down + c.safe_keepalive_interval
    assert c.safe_step_down > 1.2 * c.safe_keepalive_interval
    # the retry budget outlasts a raft leader change with etcd's default timings (<= 2 s)
    assert c.retry_budget == pytest.approx(5.0)
    assert Config(ttl=5).retry_budget == pytest.approx(2.5)


@pytest.mark.parametrize(
    ("endpoints", "expected"),
    [
        ("localhost:2379", ("127.0.0.1:2379",)),
        ("http://10.0.0.1:2379/,10.0.0.2:2379", ("10.0.0.1:2379", "10.0.0.2:2379")),
        (["a:1", "a:1", "b:2"], ("a:1", "b:2")),
    ],
)
def test_endpoints_are_normalised(endpoints: object, expected: tuple[str, ...]) -> None:
    assert Config(endpoints=endpoints).endpoints == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [(), "", ["nohost"], ["h:0"], ["h:99999"], ["h:x"], ["h:1/p"]])
def test_bad_endpoints_are_refused(bad: object) -> None:
    with pytest.raises(ConfigurationError, match="endpoints"):
        Config(endpoints=bad)  # type: ignore[arg-type]


def test_https_endpoint_needs_ca() -> None:
    with pytest.raises(ConfigurationError, match="CA"):
        Config(endpoints=("https://h:2379",))


def test_timing_invariants_are_checked() -> None:
    with pytest.raises(ConfigurationError, match=r"ttl \(3\) must exceed"):
        Config(ttl=3, keepalive_interval=1, step_down=2.5)
    with pytest.raises(ConfigurationError, match=r"step_down .* 1.2 x keepalive_interval"):
        Config(ttl=10, keepalive_interval=3, step_down=3)
    with pytest.raises(ConfigurationError, match="ttl"):
        Config(ttl=1)
    with pytest.raises(ConfigurationError, match="positive"):
        Config(ttl=-5)
    with pytest.raises(ConfigurationError, match="number"):
        Config(request_timeout="soon")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="positive"):
        Config(request_timeout=float("nan"))


def test_missing_cert_file_is_refused(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(ConfigurationError, match=r"ca_cert: cannot read .*nope.pem"):
        Config(ca_cert=missing)
    notpem = tmp_path / "x.pem"
    notpem.write_text("hello")
    with pytest.raises(ConfigurationError, match="not a PEM"):
        Config(ca_cert=notpem)


def test_tls_pairs(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(PEM)
    assert Config(ca_cert=ca).tls
    with pytest.raises(ConfigurationError, match="go together"):
        Config(ca_cert=ca, client_cert=ca)
    with pytest.raises(ConfigurationError, match="CA"):
        Config(client_cert=ca, client_key=ca)
    with pytest.raises(ConfigurationError, match="user and password"):
        Config(user="root")


def test_ids_are_validated() -> None:
    with pytest.raises(ValueError, match="namespace"):
        Config(namespace="a/b")
    with pytest.raises(ValueError, match="tenant"):
        Config(tenant="")


def test_from_env_and_overrides() -> None:
    env = {
        "FOUNDATION_ETCD_ENDPOINTS": "10.1.1.1:2379, 10.1.1.2:2379",
        "FOUNDATION_ETCD_TTL": "12",
        "FOUNDATION_ETCD_TENANT": "acme",
        "FOUNDATION_ETCD_USER": "u",
        "FOUNDATION_ETCD_PASSWORD": "s3cret-pw",
    }
    c = Config.from_env(env, namespace="ns")
    assert c.endpoints == ("10.1.1.1:2379", "10.1.1.2:2379")
    assert c.ttl == 12.0 and c.tenant == "acme" and c.namespace == "ns" and c.user == "u"
    assert "s3cret-pw" not in repr(c) and c.password == "s3cret-pw"
    with pytest.raises(ConfigurationError, match="FOUNDATION_ETCD_TTL"):
        Config.from_env({"FOUNDATION_ETCD_TTL": "ten"})
    with pytest.raises(ConfigurationError, match="unknown setting"):
        Config.from_env({}, colour="red")


def test_with_options_revalidates() -> None:
    c = Config()
    assert c.with_options(ttl=30).ttl == 30
    with pytest.raises(ConfigurationError):
        c.with_options(ttl=30, step_down=1)


def test_with_options_default_timings_follow_ttl() -> None:
    c = Config(ttl=3).with_options(ttl=2)
    assert (c.keepalive_interval, c.step_down) == (pytest.approx(2 / 6), pytest.approx(2 / 3))
    pinned = Config(ttl=10, keepalive_interval=2, step_down=4).with_options(ttl=20)
    assert (pinned.keepalive_interval, pinned.step_down) == (2, 4)


@pytest.mark.parametrize("reserved", ["_system", "_", "_other"])
def test_reserved_tenant_and_namespace_are_refused(reserved: str) -> None:
    # a tenant called _system would have /{ns}/_system/ (limits and queues) as its prefix
    with pytest.raises(InvalidIdError, match=r"tenant .*reserved for the library"):
        Config(tenant=reserved)
    with pytest.raises(InvalidIdError, match=r"namespace .*reserved for the library"):
        Config(namespace=reserved)
    with pytest.raises(InvalidIdError, match="tenant"):
        Config.from_env({"FOUNDATION_ETCD_TENANT": reserved})
    with pytest.raises(InvalidIdError, match="tenant"):
        Config().with_options(tenant=reserved)
    ok = Config(namespace="ns_1", tenant="tenant_a")  # '_' inside an id is fine
    assert ok.keyspace.prefix == b"/ns_1/tenant_a/"
    assert not ok.keyspace.prefix.startswith(ok.keyspace.system_prefix)
