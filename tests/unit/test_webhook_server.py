from __future__ import annotations

import pytest

from shakeout.handlers.webhook_server import ServiceRef, service_client_config


def test_service_reference_parsing_and_certificate_names() -> None:
    ref = ServiceRef.parse("shakeout-system/shakeout-webhook:8443")
    assert (ref.namespace, ref.name, ref.port) == ("shakeout-system", "shakeout-webhook", 8443)
    assert ref.hosts == (
        "shakeout-webhook.shakeout-system.svc",
        "shakeout-webhook.shakeout-system.svc.cluster.local",
    )
    assert ServiceRef.parse("ns/name").port == 443
    with pytest.raises(ValueError, match="NAMESPACE/NAME"):
        ServiceRef.parse("just-a-name")


def test_url_config_becomes_a_service_config_with_the_same_ca() -> None:
    ref = ServiceRef("ns", "hook", 443)
    config = service_client_config({"url": "https://1.2.3.4:9443", "caBundle": "Q0E="}, ref)
    assert config == {
        "caBundle": "Q0E=",
        "service": {"namespace": "ns", "name": "hook", "port": 443, "path": ""},
    }
