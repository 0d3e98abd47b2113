//===- InitTest.cpp - counter-based parameter initialisation --------------===//
#include "runtime/Init.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

using namespace loom::runtime;

namespace {

ParamSpec param(const std::string &name, std::vector<int64_t> shape,
                const std::string &init, std::vector<double> args = {}) {
  ParamSpec p;
  p.name = name;
  p.shape = std::move(shape);
  p.elements = 1;
  for (int64_t d : p.shape)
    p.elements *= d;
  p.bytes = p.elements * 4;
  p.init = init;
  p.initArgs = std::move(args);
  return p;
}

std::vector<float> full(const ParamSpec &p, uint64_t seed) {
  std::vector<float> v(p.elements);
  initRange(p, seed, 0, p.elements, v.data());
  return v;
}

struct Moments {
  double mean, var, minv, maxv;
};
Moments moments(const std::vector<float> &v) {
  double s = 0, s2 = 0, lo = INFINITY, hi = -INFINITY;
  for (float x : v) {
    s += x;
    lo = std::min(lo, double(x));
    hi = std::max(hi, double(x));
  }
  double mean = s / v.size();
  for (float x : v)
    s2 += (x - mean) * (x - mean);
  return {mean, s2 / v.size(), lo, hi};
}

TEST(Init, SameSeedSameValuesOtherSeedOrNameDiffers) {
  ParamSpec p = param("layers.0.wq", {32, 32}, "normal", {0.02});
  EXPECT_EQ(full(p, 7), full(p, 7));
  EXPECT_NE(full(p, 7), full(p, 8));
  ParamSpec q = p;
  q.name = "layers.1.wq";
  EXPECT_NE(full(p, 7), full(q, 7));
}

TEST(Init, ElementDependsOnlyOnSeedNameAndIndex) {
  // The same name and index give the same value whatever the shape.
  ParamSpec a = param("w", {4, 5}, "normal", {1.0});
  ParamSpec b = param("w", {100}, "normal", {1.0});
  std::vector<float> va = full(a, 3), vb = full(b, 3);
  for (int i = 0; i < 20; ++i)
    EXPECT_EQ(va[i], vb[i]) << i;
  for (int i = 0; i < 20; ++i)
    EXPECT_EQ(float(initValue(a, 3, i)), va[i]);
}

TEST(Init, ShardsReproduceTheFullTensor) {
  for (const char *init : {"normal", "uniform", "glorot"}) {
    std::vector<double> args;
    if (std::string(init) == "normal")
      args = {0.5};
    if (std::string(init) == "uniform")
      args = {-2, 1};
    ParamSpec p = param("head", {6, 10}, init, args);
    std::vector<float> whole = full(p, 11);
    // Column shards (shard(_, tp) with tp = 2) and row shards (tp = 3).
    for (int64_t c0 : {0, 5}) {
      std::vector<float> shard(6 * 5);
      initBlock(p, 11, {0, c0}, {6, 5}, shard.data());
      for (int r = 0; r < 6; ++r)
        for (int c = 0; c < 5; ++c)
          EXPECT_EQ(shard[r * 5 + c], whole[r * 10 + c0 + c]) << init;
    }
    for (int64_t r0 : {0, 2, 4}) {
      std::vector<float> shard(2 * 10);
      initBlock(p, 11, {r0, 0}, {2, 10}, shard.data());
      for (int i = 0; i < 20; ++i)
        EXPECT_EQ(shard[i], whole[r0 * 10 + i]) << init;
    }
    // A contiguous range (a flat shard).
    std::vector<float> range(17);
    initRange(p, 11, 23, 17, range.data());
    for (int i = 0; i < 17; ++i)
      EXPECT_EQ(range[i], whole[23 + i]);
  }
  ParamSpec p = param("x", {4, 4}, "normal", {1.0});
  std::vector<float> out(16);
  EXPECT_THROW(initBlock(p, 0, {3, 0}, {2, 4}, out.data()), Error);
}

TEST(Init, EachRankInitialisesItsSliceOfTheGlobalTensor) {
  // w: [6, 10] split (_, tp) over tp = 2, and (dp, tp) over dp = 3: each
  // rank's slice holds the full tensor's values (glorot with the full
  // tensor's fans).
  for (const char *init : {"glorot", "normal"}) {
    ParamSpec whole = param("w", {6, 10}, init,
                            std::string(init) == "normal"
                                ? std::vector<double>{0.5}
                                : std::vector<double>{});
    std::vector<float> want = full(whole, 4);
    for (bool rows : {false, true}) {
      Manifest m;
      ParamSpec p = whole;
      p.globalShape = {6, 10};
      p.shape = {rows ? 2 : 6, 5};
      p.split = {rows ? 0 : -1, 1};
      p.elements = p.shape[0] * p.shape[1];
      p.bytes = p.elements * 4;
      m.params.push_back(p);
      for (int64_t d = 0; d < (rows ? 3 : 1); ++d)
        for (int64_t t = 0; t < 2; ++t) {
          std::vector<unsigned char> arena(size_t(p.bytes));
          initParams(m, 4, arena.data(), {d, t, 0});
          const float *got = reinterpret_cast<const float *>(arena.data());
          for (int64_t r = 0; r < p.shape[0]; ++r)
            for (int64_t c = 0; c < 5; ++c)
              EXPECT_EQ(got[r * 5 + c],
                        want[size_t((d * p.shape[0] + r) * 10 + t * 5 + c)])
                  << init << " slice (" << d << ", " << t << ")";
        }
    }
  }
}

TEST(Init, ZerosAndOnes) {
  for (float x : full(param("b", {7}, "zeros"), 1))
    EXPECT_EQ(x, 0.0f);
  for (float x : full(param("g", {7}, "ones"), 1))
    EXPECT_EQ(x, 1.0f);
}

TEST(Init, NormalMoments) {
  ParamSpec p = param("wte", {400, 500}, "normal", {0.02});
  Moments m = moments(full(p, 0));
  double n = p.elements;
  EXPECT_NEAR(m.mean, 0.0, 4 * 0.02 / std::sqrt(n));
  EXPECT_NEAR(std::sqrt(m.var), 0.02, 0.02 * 0.01);
  EXPECT_GT(m.maxv, 0.02 * 3.5); // tails exist
  EXPECT_LT(m.maxv, 0.02 * 6.5);
  // Fraction within one standard deviation ~ 68.27%.
  std::vector<float> v = full(p, 0);
  double inside = 0;
  for (float x : v)
    inside += std::fabs(x) < 0.02;
  EXPECT_NEAR(inside / n, 0.6827, 0.005);
}

TEST(Init, UniformMoments) {
  ParamSpec p = param("u", {200000}, "uniform", {-1.0, 3.0});
  Moments m = moments(full(p, 5));
  EXPECT_NEAR(m.mean, 1.0, 0.02);
  EXPECT_NEAR(m.var, 16.0 / 12.0, 0.02);
  EXPECT_GE(m.minv, -1.0);
  EXPECT_LT(m.maxv, 3.0);
}

TEST(Init, GlorotBoundAndFans) {
  EXPECT_EQ(glorotFans({64, 128}), (std::pair<int64_t, int64_t>{64, 128}));
  EXPECT_EQ(glorotFans({2, 3, 5}), (std::pair<int64_t, int64_t>{6, 5}));
  // Conv weights [out, in, kh, kw], PyTorch's convention.
  EXPECT_EQ(glorotFans({16, 3, 5, 5}), (std::pair<int64_t, int64_t>{75, 400}));
  ParamSpec p = param("w1", {256, 512}, "glorot");
  double r = std::sqrt(6.0 / (256 + 512));
  Moments m = moments(full(p, 2));
  EXPECT_GE(m.minv, -r);
  EXPECT_LE(m.maxv, r);
  EXPECT_GT(m.maxv, 0.99 * r);
  EXPECT_NEAR(m.mean, 0.0, 0.002);
  EXPECT_NEAR(m.var, r * r / 3, r * r / 3 * 0.02);
}

TEST(Init, ParamsAndStateInTheArena) {
  Manifest m;
  m.params.push_back(param("w", {4, 4}, "ones"));
  m.params.back().offset = 0;
  m.params.push_back(param("b", {4}, "normal", {1.0}));
  m.params.back().offset = 64;
  Buffer s;
  s.name = "w.exp_avg";
  s.shape = {4};
  s.elements = 4;
  s.bytes = 16;
  s.offset = 128;
  m.state.push_back(s);
  std::vector<unsigned char> arena(192, 0xAB);
  initParams(m, 9, arena.data());
  zeroState(m, arena.data());
  const float *w = reinterpret_cast<const float *>(arena.data());
  for (int i = 0; i < 16; ++i)
    EXPECT_EQ(w[i], 1.0f);
  const float *b = reinterpret_cast<const float *>(arena.data() + 64);
  for (int i = 0; i < 4; ++i)
    EXPECT_EQ(b[i], float(initValue(m.params[1], 9, i)));
  for (int i = 128; i < 144; ++i)
    EXPECT_EQ(arena[i], 0);
  EXPECT_EQ(arena[144], 0xAB); // nothing beyond the state buffer
}

} // namespace
