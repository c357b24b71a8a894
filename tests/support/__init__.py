"""Test support code shared by the test suites and the bench scripts."""
