//===- VersionTest.cpp - runtime build facts ------------------------------===//
#include "runtime/Version.h"

#include <gtest/gtest.h>

TEST(RuntimeVersion, DescribesEveryBackend) {
  std::string s = loom::runtime::describeBuild();
  EXPECT_NE(s.find("mpi="), std::string::npos);
  EXPECT_NE(s.find("dnnl="), std::string::npos);
  EXPECT_NE(s.find("cuda="), std::string::npos);
}
