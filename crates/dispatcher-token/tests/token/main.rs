//! Integration tests of dispatcher-token: the key directory, rotation, and the verifier under attack.

mod attacks;
mod common;
mod fuzz;
mod keydir;
mod rotation;
