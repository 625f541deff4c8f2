"""The hub simulator: 情報提供ネットワークシステム, with J-LIS's 取得番号 role.

A real aiohttp server.  It keeps the agency registry (endpoints and public
keys), issues 符号 (a different random one per agency and person), checks
every query against the authorization list, issues signed permits, routes
requests and answers through a durable outbox, and records everything it
routed.  It never holds a key that opens a payload: answers are sealed by the
provider for the requester and pass through as ciphertext.

One module per concern:

* :mod:`~chukan.simulators.hub.config`, :mod:`~chukan.simulators.hub.state`:
  settings and what a running hub holds;
* :mod:`~chukan.simulators.hub.auth`: who may call (certificates, admin token);
* :mod:`~chukan.simulators.hub.registry`, :mod:`~chukan.simulators.hub.keys`:
  agency enrolment, endpoints and key rotation;
* :mod:`~chukan.simulators.hub.codes`: 取得番号 and 符号 issuance;
* :mod:`~chukan.simulators.hub.messages`: the signed-envelope door and dispatch;
* :mod:`~chukan.simulators.hub.routing`: queries, permits, deferred answers,
  recovered conclusions; :mod:`~chukan.simulators.hub.conclusions`: a query's
  one conclusion;
* :mod:`~chukan.simulators.hub.outbox`, :mod:`~chukan.simulators.hub.worker`:
  the outbox table and the delivery worker (leases, retries, expiry);
* :mod:`~chukan.simulators.hub.lists`: authorization-list publication and push;
* :mod:`~chukan.simulators.hub.records`: routed messages and the operator's records;
* :mod:`~chukan.simulators.hub.app`: routes and start-up.
"""

from chukan.simulators.hub.app import create_hub_app
from chukan.simulators.hub.config import HUB_DATABASE, HubConfig
from chukan.simulators.hub.state import HUB_STATE, HubState

__all__ = ["HUB_DATABASE", "HUB_STATE", "HubConfig", "HubState", "create_hub_app"]
