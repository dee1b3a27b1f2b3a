import keystore


def test_all_is_sorted_and_complete() -> None:
    assert keystore.__all__ == sorted(keystore.__all__)
    assert keystore.__all__ == [
        "ApiKey",
        "ApiKeyAuth",
        "ApiKeyStore",
        "BrokenRow",
        "ConfigError",
        "InvalidRow",
        "KeyDisabled",
        "KeyExpired",
        "KeyNotFound",
        "KeyRejected",
        "KeyStoreError",
        "KeystoreCollector",
        "MalformedKey",
        "NewKey",
        "Settings",
        "StoreUnavailable",
        "build_admin_router",
        "get_store",
        "hash_key",
        "key_pattern",
        "load_env_file",
        "reset_store",
    ]
    for name in keystore.__all__:
        assert getattr(keystore, name)
