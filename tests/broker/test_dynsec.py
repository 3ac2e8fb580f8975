"""The Dynamic Security desired state, and the commands that bring a broker to it."""

from __future__ import annotations

import json
from typing import Any

from actimesh.broker.dynsec import (
    Access,
    AccessClient,
    Acl,
    AclType,
    Role,
    plugin_config,
    sync_commands,
)

CMD = Role("dev-bwc-1", (Acl(AclType.SEND, "t/bwc-1/event"),))
ENGINE = Role("engine", (Acl(AclType.SUBSCRIBE_WITHIN, "t/+/event"),))
WANT = Access(
    clients=(
        AccessClient("bwc-1", "demo-bwc-1", ("dev-bwc-1",)),
        AccessClient("svc-engine", None, ("engine",)),
    ),
    roles=(CMD, ENGINE),
)


def _listed(access: Access) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """What listClients/listRoles (verbose) report for a broker holding ``access``."""
    config = json.loads(plugin_config(access))
    return config["clients"], config["roles"]


def test_round_trip_through_json() -> None:
    assert Access.from_json(WANT.to_json()) == WANT


def test_plugin_config_denies_by_default_and_has_no_passwords() -> None:
    config = json.loads(plugin_config(WANT))
    assert config["defaultACLAccess"] == {
        "publishClientSend": False,
        "publishClientReceive": False,
        "subscribe": False,
        "unsubscribe": True,
    }
    assert all("password" not in c for c in config["clients"])
    assert config["clients"][0]["clientid"] == "demo-bwc-1"
    assert "clientid" not in config["clients"][1]


def test_nothing_to_do_when_the_broker_matches() -> None:
    assert sync_commands(*_listed(WANT), WANT) == []


def test_from_empty_roles_come_before_the_clients_that_use_them() -> None:
    commands = sync_commands([], [], WANT)
    verbs = [c["command"] for c in commands]
    assert verbs == ["createRole", "createRole", "createClient", "createClient"]


def test_disable_enable_and_delete() -> None:
    clients, roles = _listed(WANT)
    disabled = Access((AccessClient("bwc-1", "demo-bwc-1", ("dev-bwc-1",), disabled=True),), (CMD,))
    commands = sync_commands(clients, roles, disabled)
    assert commands == [
        {"command": "disableClient", "username": "bwc-1"},
        {"command": "deleteClient", "username": "svc-engine"},
        {"command": "deleteRole", "rolename": "engine"},
    ]
    back = sync_commands(*_listed(disabled), Access(WANT.clients[:1], (CMD,)))
    assert back == [{"command": "enableClient", "username": "bwc-1"}]


def test_a_changed_client_id_is_deleted_and_created() -> None:
    moved = Access((AccessClient("bwc-1", "other", ("dev-bwc-1",)), WANT.clients[1]), WANT.roles)
    verbs = [c["command"] for c in sync_commands(*_listed(WANT), moved)]
    assert verbs == ["deleteClient", "createClient"]


def test_role_acls_are_added_and_removed() -> None:
    wider = Role("dev-bwc-1", (Acl(AclType.SEND, "t/bwc-1/ack"),))
    commands = sync_commands(*_listed(WANT), Access(WANT.clients, (wider, ENGINE)))
    assert commands == [
        {
            "command": "removeRoleACL",
            "rolename": "dev-bwc-1",
            "acltype": "publishClientSend",
            "topic": "t/bwc-1/event",
        },
        {
            "command": "addRoleACL",
            "rolename": "dev-bwc-1",
            "acltype": "publishClientSend",
            "topic": "t/bwc-1/ack",
            "allow": True,
        },
    ]


def test_the_admin_doing_it_is_never_touched() -> None:
    admin = AccessClient("svc-admin", None, ("admin",))
    have = Access((*WANT.clients, admin), (*WANT.roles, Role("admin", ())))
    assert sync_commands(*_listed(have), WANT, keep=("svc-admin",)) == []
