"""The 国保連 simulator: the 伝送 mailbox, intake of 連絡票 files, return files.

A real aiohttp server with its own database (HTTP API: :mod:`.app`).  One
module per concern:

* :mod:`~chukan.simulators.kokuhoren.config`, :mod:`~chukan.simulators.kokuhoren.state`:
  settings, what a running simulator holds, signed answers;
* :mod:`~chukan.simulators.kokuhoren.auth`: admin token, 保険者 token and certificate;
* :mod:`~chukan.simulators.kokuhoren.params`: 保険者番号, ファイル管理番号, month;
* :mod:`~chukan.simulators.kokuhoren.insurers`: onboarding and the simulator's keys;
* :mod:`~chukan.simulators.kokuhoren.intake`: files received, reviewed, registered;
* :mod:`~chukan.simulators.kokuhoren.rules`: 国保連's intake rules (pure);
* :mod:`~chukan.simulators.kokuhoren.returns`: 給付実績 return files;
* :mod:`~chukan.simulators.kokuhoren.app`: routes and start-up.
"""

from chukan.simulators.kokuhoren.app import create_kokuhoren_app
from chukan.simulators.kokuhoren.config import KOKUHOREN_DATABASE, KokuhorenConfig
from chukan.simulators.kokuhoren.state import KOKUHOREN_STATE, KokuhorenState

__all__ = [
    "KOKUHOREN_DATABASE",
    "KOKUHOREN_STATE",
    "KokuhorenConfig",
    "KokuhorenState",
    "create_kokuhoren_app",
]
