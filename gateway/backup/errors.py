"""Failures of ``chukan backup`` and ``chukan restore``: one line on stderr with the code.

Each names what went wrong without echoing a URL or a passphrase.  A backup that
is not exactly what ``chukan backup`` wrote (an edited byte, a cut-off tail, a
swapped header) is refused before anything is restored.
"""

from __future__ import annotations

from chukan.gateway.core.errors import CommandError


class BackupError(CommandError):
    """``chukan backup``/``restore`` cannot do what it was asked: exit status 2."""

    code = "backup_failed"


class BackupPassphraseError(BackupError):
    """No usable passphrase: missing, too short, or a file others may read."""

    code = "backup_passphrase_invalid"


class BackupPassphraseWrongError(BackupError):
    """The passphrase does not open this backup (its key check fails)."""

    code = "backup_passphrase_wrong"


class BackupFormatError(BackupError):
    """The file is not a chukan backup (or of a format this version does not read)."""

    code = "backup_format_invalid"


class BackupTamperedError(BackupError):
    """A chunk fails authentication, is out of place, or the content digests disagree."""

    code = "backup_tampered"


class BackupTruncatedError(BackupTamperedError):
    """The backup ends before its final chunk: cut off (or still being written)."""

    code = "backup_truncated"


class BackupToolMissingError(BackupError):
    """No ``pg_dump``/``pg_restore`` at least as new as the server (or the archive) was found."""

    code = "backup_tool_missing"


class BackupPrivilegeError(BackupError):
    """The login may not dump every row: row-level security applies to it (needs BYPASSRLS)."""

    code = "backup_privilege_missing"


class BackupDumpFailedError(BackupError):
    """``pg_dump`` failed; nothing was written."""

    code = "backup_dump_failed"


class BackupDatabaseError(BackupError):
    """The database cannot be reached or read."""

    code = "backup_database_unavailable"


class RestoreTargetNotEmptyError(BackupError):
    """The target database already holds tables: a restore never overwrites."""

    code = "restore_target_not_empty"


class RestoreKeyConflictError(BackupError):
    """The key folder already holds a different file of the same name than the backup."""

    code = "restore_key_conflict"


class RestoreFailedError(BackupError):
    """``pg_restore`` or the roles' re-provisioning failed; its one transaction was rolled back."""

    code = "restore_failed"


class RestoreNeedsTenantUrlsError(BackupError):
    """Tenant login roles must be created but no folder was given for their new URLs."""

    code = "restore_tenant_urls_missing"
