//! The two-peer harness (see below).
