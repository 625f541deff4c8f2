"""Staff (職員): accounts, passwords, roles, sessions and the audit trail."""
