"""符号取得 (符号管理): registering people."""
