"""NETWORK_ENCRYPTED=1 (scripts/up.sh): the overlay encrypted with IPsec, only where the kernel can.
Docker's encrypted overlay has libnetwork add ESP states with AES-GCM (rfc4106(gcm(aes))) through
xfrm; scripts/lib.sh's ipsec_probe tries to add one in a throwaway namespace first."""

import subprocess

from tests.helpers import ROOT


def probe():
    return subprocess.run(["bash", "-c", f"source {ROOT}/scripts/lib.sh; ipsec_probe"], capture_output=True,
                          text=True, timeout=30)


def namespaces():
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout


def test_the_probe_agrees_with_the_kernels_crypto_and_leaves_nothing():
    result = probe()
    with open("/proc/crypto") as crypto:
        has_gcm = any(line.split(":", 1)[1].strip() == "rfc4106(gcm(aes))"
                      for line in crypto if line.startswith("name"))
    print("ipsec_probe:", result.returncode, result.stdout.strip())
    if result.returncode == 0:
        assert has_gcm, "ESP with rfc4106(gcm(aes)) was accepted but /proc/crypto does not list it"
    else:
        # It says what the kernel refused, e.g. "Error: Requested AEAD algorithm not found."
        assert "rfc4106(gcm(aes))" in result.stdout and "Error" in result.stdout, result.stdout
    assert "wsapp-ipsec-probe" not in namespaces()

