"""The sync tests' core scenarios with the two devices on two different replicas of one
PostgreSQL database and one bucket: every change crosses from one replica to the other
through the journal and a PostgreSQL notification (conftest.devices)."""

from __future__ import annotations

# A chosen few: each costs two mounts (~5 s), and the suite must stay short.
from tests.sync.test_conflicts import (  # noqa: F401 - collected here, under this directory's `devices`
    test_a_file_written_while_deleted_elsewhere_comes_back,
)
from tests.sync.test_live_sync import (  # noqa: F401
    test_create_modify_delete_arrive_by_themselves,
    test_directory_move_is_one_operation_on_the_other_device,
    test_propagation_is_fast,
)
