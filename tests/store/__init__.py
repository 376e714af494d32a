"""Tests of the embedded SQLite store."""
