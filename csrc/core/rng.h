// Counter-based random streams: one independent stream per (seed, stream index), so results do not
// depend on how hypotheses are spread over threads, and a seed works on every call.
#pragma once

#include <cstdint>

namespace transpose {

inline uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

class Rng {
 public:
  // Stream `stream` of the generator family `seed`; distinct (seed, stream) pairs give unrelated streams.
  Rng(uint64_t seed, uint64_t stream) {
    uint64_t s = seed ^ 0x5DEECE66DULL;
    const uint64_t a = splitmix64(s);
    uint64_t s2 = stream * 0xD1B54A32D192ED03ULL + a;
    state_ = splitmix64(s2);
  }
  uint64_t next() { return splitmix64(state_); }
  // Uniform integer in [0, n) (Lemire's multiply-shift; the bias is below 2^-32 for our n).
  uint32_t below(uint32_t n) { return static_cast<uint32_t>(((next() >> 32) * static_cast<uint64_t>(n)) >> 32); }
  // Uniform double in [0, 1).
  double uniform() { return static_cast<double>(next() >> 11) * (1.0 / 9007199254740992.0); }

 private:
  uint64_t state_;
};

}  // namespace transpose
