//! Low-level MessagePack reading and writing over byte slices.
