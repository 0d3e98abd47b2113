// RUN: loom-opt %s -split-input-file -verify-diagnostics

// expected-error @+1 {{'dist.mesh' op has 3 axes but 2 sizes}}
dist.mesh @mesh axes ["dp", "tp", "pp"] shape [1, 1]

// -----

// expected-error @+1 {{'dist.mesh' op mesh sizes must be positive, got 0}}
dist.mesh @mesh axes ["dp", "tp", "pp"] shape [1, 0, 1]

// -----

// expected-error @+1 {{'dist.program' op refers to an unknown mesh @nowhere}}
dist.program @p "train" on @nowhere {
}
