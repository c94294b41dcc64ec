//! Test fixtures for vmk (being written: see issue 2).
