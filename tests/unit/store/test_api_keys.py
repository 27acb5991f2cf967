"""API key format and hashing."""

from store import api_keys


def test_new_keys_have_the_documented_shape_and_their_prefix():
    key, prefix = api_keys.generate_key()
    assert key.startswith(f"mr_{prefix}_") and len(prefix) == api_keys.PREFIX_LENGTH
    assert api_keys.key_prefix(key) == prefix


def test_keys_are_unique():
    assert len({api_keys.generate_key()[0] for _ in range(200)}) == 200


def test_malformed_keys_have_no_prefix():
    for text in ("", "sk-abc", "mr_short_x", "mr_ABCDEFGH_" + "a" * 40, "mr_abcdefgh_" + "a" * 39):
        assert api_keys.key_prefix(text) is None


def test_hash_verifies_only_the_same_key_and_never_contains_it():
    key, _ = api_keys.generate_key()
    stored = api_keys.hash_key(key)
    assert key.split("_")[2] not in stored
    assert api_keys.verify_key(stored, key)
    assert not api_keys.verify_key(stored, api_keys.generate_key()[0])
    assert not api_keys.verify_key("not a hash", key)


def test_fingerprint_is_stable_and_not_the_key():
    key, _ = api_keys.generate_key()
    assert api_keys.key_fingerprint(key) == api_keys.key_fingerprint(key) != key


def test_a_key_header_that_is_not_utf8_has_a_fingerprint_and_is_nobodys_key():
    presented = b"mr_\xff\xff\xff\xff\xff\xff\xff\xff_x".decode("utf-8", "surrogateescape")  # as mitmproxy hands it over
    assert len(api_keys.key_fingerprint(presented)) == 64
    assert api_keys.key_prefix(presented) is None
