"""Test helpers: real servers started on loopback for the tests."""
