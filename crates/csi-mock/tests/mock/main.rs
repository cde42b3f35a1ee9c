//! Integration tests of csi-mock: the library over a real Unix socket, and the binary with its
//! HTTP control API.

mod binary;
mod common;
mod controller;
mod faults;
mod persistence;
