"""``qkdpost deliver``: hand a key store's keys to applications over ETSI GS QKD 014.

    qkdpost deliver --store keys/alice --role master --kme-id KME_A --peer-kme-id KME_B \\
        --master-sae SAE_A --slave-sae SAE_B --listen 127.0.0.1:8443 \\
        --tls-cert kme.pem --tls-key kme.key --client-ca sae-ca.pem
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "deliver",
        help="serve a key store's keys to applications (ETSI GS QKD 014 REST key delivery)",
        description="Run one site's key-management entity: the master side answers enc_keys, the slave "
        "side dec_keys with the key IDs the master's application passed on. Both sides cut the same "
        "blocks into keys of the same size and name them alike; every key is delivered at most once.",
    )
    p.add_argument("--store", required=True, metavar="DIR", help="this site's key store (qkdpost run --out)")
    p.add_argument("--role", required=True, choices=["master", "slave"],
                   help="master: enc_keys for the master SAE; slave: dec_keys for the slave SAE")
    p.add_argument("--kme-id", required=True, help="this KME's ID")
    p.add_argument("--peer-kme-id", required=True, help="the other site's KME ID")
    p.add_argument("--master-sae", required=True, metavar="ID", help="the master SAE's ID")
    p.add_argument("--slave-sae", required=True, metavar="ID", help="the slave SAE's ID")
    p.add_argument("--key-size", type=int, default=256, metavar="BITS", help="bits per key (default 256)")
    p.add_argument("--listen", default="127.0.0.1:8443", metavar="[HOST:]PORT", help="address (default 127.0.0.1:8443)")
    p.add_argument("--tls-cert", metavar="PEM", help="server certificate (HTTPS)")
    p.add_argument("--tls-key", metavar="PEM", help="server private key")
    p.add_argument("--client-ca", metavar="PEM",
                   help="CA of the SAEs' client certificates: require them, subject CN = SAE ID (ETSI 014)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging

    from ..delivery import Kme
    from ..delivery.server import make_server
    from ..transport import parse_address

    kme = Kme(args.store, role=args.role, kme_id=args.kme_id, peer_kme_id=args.peer_kme_id,
              master_sae_id=args.master_sae, slave_sae_id=args.slave_sae, key_size=args.key_size)
    host, port = parse_address(args.listen)
    server = make_server(kme, host, port, tls_cert=args.tls_cert, tls_key=args.tls_key, client_ca=args.client_ca)
    if not args.client_ca:
        logging.getLogger("qkdpost.delivery").warning(
            "no --client-ca: applications are not authenticated, anyone reaching %s:%d can take keys",
            host, server.server_address[1])
    scheme = "https" if args.tls_cert else "http"
    print(f"KME {args.kme_id} ({args.role}) on {scheme}://{host}:{server.server_address[1]}/api/v1/keys/",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
