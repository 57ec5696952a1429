"""Two IEEE 11073 SDC participants of the sdc11073 stack (3.0) exchanging over mutual TLS with
medid-issued certificates: a provider serving a small MDIB and a consumer reading it.

    exchange.py DIR PROVIDER CONSUMER [--no-purpose-check]

DIR holds ca.pem (medid's root) and, for each participant NAME, NAME.pem (its certificate and
chain) and NAME.key. Prints one JSON line: {"ok": true, "descriptors": N, ...} when the consumer
read the provider's MDIB, {"ok": false, "error": "..."} when the exchange was refused.

sdc11073 does not check the SDC Participant Key Purpose itself: it hands the peer's certificate
to the application (SdcConsumer.binary_peer_certificate) and takes the application's
ssl.SSLContext. As IEEE 11073-20701 asks of a participant, these applications check it in
their TLS contexts: every connection to or from a provider requires the provider's purpose
(1.2.840.10004.20701.1.1) in the peer's EKU, every one to or from a consumer the consumer's
(1.2.840.10004.20701.1.2), right after the handshake. --no-purpose-check leaves it out, to
show what the stack accepts on its own.
"""
import json
import pathlib
import ssl
import sys
import uuid

from cryptography import x509
from cryptography.x509.oid import ObjectIdentifier
from sdc11073 import certloader
from sdc11073.consumer.consumerimpl import SdcConsumer
from sdc11073.definitions_sdc import SdcV1Definitions
from sdc11073.mdib import ConsumerMdib, ProviderMdib
from sdc11073.provider.providerimpl import SdcProvider
from sdc11073.xml_types.dpws_types import ThisDeviceType, ThisModelType

PROVIDER_PURPOSE = "1.2.840.10004.20701.1.1"
CONSUMER_PURPOSE = "1.2.840.10004.20701.1.2"

# Each refusal the checks made: which side refused, and why.
REFUSALS = []


def purposes(der):
    """The EKU OIDs of a DER certificate (none when it has no EKU)."""
    cert = x509.load_der_x509_certificate(der)
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return set()
    return {oid.dotted_string for oid in eku}


def requiring(purpose, side):
    """An SSLSocket class that, once its handshake is done, refuses a peer without `purpose`."""

    class Checked(ssl.SSLSocket):
        def do_handshake(self, *args, **kwargs):
            super().do_handshake(*args, **kwargs)
            der = self.getpeercert(binary_form=True)
            if der is None or ObjectIdentifier(purpose).dotted_string not in purposes(der):
                reason = f"the peer's certificate lacks the SDC key purpose {purpose}"
                REFUSALS.append({"by": side, "reason": reason})
                self.close()
                raise ssl.SSLError(reason)

    return Checked


def contexts(directory, name, side, peer_purpose, check):
    container = certloader.mk_ssl_contexts(
        directory / f"{name}.key", directory / f"{name}.pem", directory / "ca.pem"
    )
    if check:
        for context in (container.client_context, container.server_context):
            context.sslsocket_class = requiring(peer_purpose, side)
    return container


class NoDiscovery:
    """No WS-Discovery multicast: the consumer is given the provider's address."""

    active_address = "127.0.0.1"

    def get_active_addresses(self):
        return ["127.0.0.1"]

    def publish_service(self, *args, **kwargs):
        pass

    def clear_service(self, *args, **kwargs):
        pass


def main():
    directory, provider_name, consumer_name = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    check = "--no-purpose-check" not in sys.argv
    mdib = ProviderMdib.from_mdib_file(pathlib.Path(__file__).with_name("mdib.xml"), SdcV1Definitions)
    provider = SdcProvider(
        NoDiscovery(),
        ThisModelType(
            manufacturer="acme",
            manufacturer_url="https://acme.example",
            model_name="MON-X",
            model_number="1",
            model_url="https://acme.example/mon-x",
            presentation_url="https://acme.example/mon-x",
        ),
        ThisDeviceType(friendly_name="monitor", firmware_version="1", serial_number="MON-1"),
        mdib,
        epr=uuid.uuid4(),
        # The provider's peers are consumers.
        ssl_context_container=contexts(directory, provider_name, "provider", CONSUMER_PURPOSE, check),
    )
    provider.start_all(start_rtsample_loop=False)
    result = {"ok": False}
    try:
        address = provider.get_xaddrs()[0]
        consumer = SdcConsumer(
            address,
            SdcV1Definitions,
            # The consumer's peers are providers.
            contexts(directory, consumer_name, "consumer", PROVIDER_PURPOSE, check),
            force_ssl_connect=True,
        )
        try:
            consumer.start_all()
            seen = ConsumerMdib(consumer)
            seen.init_mdib()
            metric = seen.descriptions.handle.get_one("hr")
            result = {
                "ok": True,
                "descriptors": len(seen.descriptions.objects),
                "metric": metric.Handle,
                "provider_purposes": sorted(purposes(consumer.binary_peer_certificate)),
            }
            consumer.stop_all()
        except Exception as e:  # the refusal, whichever side made it
            result = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    finally:
        provider.stop_all()
    result["refusals"] = REFUSALS
    print(json.dumps(result))


if __name__ == "__main__":
    main()
