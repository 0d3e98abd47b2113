// RUN: loom-opt %s -split-input-file -verify-diagnostics

exec.program @p "train" arena 1024 {
  // expected-error @+1 {{'exec.view' op offset 34 is not aligned to its 4-byte elements}}
  %v = exec.view 34 : memref<4xf32>
}

// -----

exec.program @p "train" arena 1000 {
  // expected-error @+1 {{'exec.view' op view [960, 1024) exceeds the arena of 1000 bytes}}
  %v = exec.view 960 : memref<16xf32>
}
