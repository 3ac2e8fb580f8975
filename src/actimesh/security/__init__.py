"""Who may talk to the broker, as what: device identity, accounts, ACLs and TLS.

* :mod:`.passwords` — Mosquitto 2 ``$7$`` password hashes, generated in Python;
* :mod:`.registry` — the SQLite device registry and the broker files rendered from it;
* :mod:`.acl` — who may connect as which client id and use which topics (rendered
  for Mosquitto's Dynamic Security plugin);
* :mod:`.nats_access` — the same rules as users of a NATS cluster, applied live;
* :mod:`.certs` — a small CA for the broker's TLS listener and client certificates;
* :mod:`.provision` — credentials for what actimesh itself starts (engine, dispatch,
  monitor, simulated devices);
* :mod:`.signing` — the engine's Ed25519 key, signed activation commands and their
  verification on the cameras.

The managed broker (:mod:`actimesh.broker.mosquitto`) is secured by default with these.
"""

from __future__ import annotations

from actimesh.security.acl import (
    LOADGEN_ACCOUNT,
    SERVICE_ACCOUNTS,
    SERVICE_ADAPTER,
    SERVICE_ADMIN,
    SERVICE_DISPATCH,
    SERVICE_ENGINE,
    SERVICE_MONITOR,
    AccountRole,
    AclAccount,
    AclDevice,
    AclPolicy,
    render_access,
)
from actimesh.security.certs import (
    CERTS_DIR,
    CertFiles,
    CertInfo,
    ServerTls,
    describe,
    init_ca,
    issue_client,
    issue_node,
    issue_server,
    server_names,
    server_tls,
)
from actimesh.security.nats_access import (
    NATS_CLUSTER_DIR,
    apply_to_cluster,
    nats_access,
    registry_nats_access,
)
from actimesh.security.passwords import (
    PBKDF2_ITERATIONS,
    generate_password,
    hash_password,
    password_line,
    verify_password,
)
from actimesh.security.provision import (
    BROKER_DIR,
    Provisioned,
    prepare_broker,
    provision_fleet,
    specs_of,
)
from actimesh.security.registry import (
    REGISTRY_NAME,
    RESERVED_PREFIXES,
    SECRETS_DIR,
    Account,
    BrokerFiles,
    Credentials,
    Device,
    DeviceCredentials,
    DeviceSpec,
    Registry,
    read_secret,
)
from actimesh.security.signing import (
    COMMAND_SIGNATURE_DOMAIN,
    ENGINE_PRIVATE_KEY,
    ENGINE_PUBLIC_KEY,
    KEYS_DIR,
    UNVERIFIED_REFUSALS,
    CommandSigner,
    CommandVerifier,
    command_signing_bytes,
    engine_key_paths,
    load_engine_public_key,
    load_engine_public_keys,
    load_or_create_engine_key,
    public_key_hex,
    refusal_code,
)

__all__ = [
    "BROKER_DIR",
    "CERTS_DIR",
    "COMMAND_SIGNATURE_DOMAIN",
    "ENGINE_PRIVATE_KEY",
    "ENGINE_PUBLIC_KEY",
    "KEYS_DIR",
    "LOADGEN_ACCOUNT",
    "NATS_CLUSTER_DIR",
    "PBKDF2_ITERATIONS",
    "REGISTRY_NAME",
    "RESERVED_PREFIXES",
    "SECRETS_DIR",
    "SERVICE_ACCOUNTS",
    "SERVICE_ADAPTER",
    "SERVICE_ADMIN",
    "SERVICE_DISPATCH",
    "SERVICE_ENGINE",
    "SERVICE_MONITOR",
    "UNVERIFIED_REFUSALS",
    "Account",
    "AccountRole",
    "AclAccount",
    "AclDevice",
    "AclPolicy",
    "BrokerFiles",
    "CertFiles",
    "CertInfo",
    "CommandSigner",
    "CommandVerifier",
    "Credentials",
    "Device",
    "DeviceCredentials",
    "DeviceSpec",
    "Provisioned",
    "Registry",
    "ServerTls",
    "apply_to_cluster",
    "command_signing_bytes",
    "describe",
    "engine_key_paths",
    "generate_password",
    "hash_password",
    "init_ca",
    "issue_client",
    "issue_node",
    "issue_server",
    "load_engine_public_key",
    "load_engine_public_keys",
    "load_or_create_engine_key",
    "nats_access",
    "password_line",
    "prepare_broker",
    "provision_fleet",
    "public_key_hex",
    "read_secret",
    "refusal_code",
    "registry_nats_access",
    "render_access",
    "server_names",
    "server_tls",
    "specs_of",
    "verify_password",
]
