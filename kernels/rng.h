// A small, portable, seedable RNG (xoshiro256** seeded by splitmix64).
// std::mt19937 + std::normal_distribution would do, but their outputs are not specified across
// standard libraries; checkpoints store this state and runs must replay bit for bit everywhere.
#pragma once
#include <cmath>
#include <cstdint>

namespace diloco {

struct Rng {
    uint64_t s[4];

    explicit Rng(uint64_t seed = 0) { reseed(seed); }

    void reseed(uint64_t seed) {
        uint64_t x = seed;
        for (auto& w : s) {  // splitmix64
            x += 0x9E3779B97F4A7C15ull;
            uint64_t z = x;
            z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
            z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
            w = z ^ (z >> 31);
        }
    }

    static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

    uint64_t next() {
        uint64_t result = rotl(s[1] * 5, 7) * 9;
        uint64_t t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = rotl(s[3], 45);
        return result;
    }

    // uniform in [0, 1) with 53 random bits
    double uniform() { return (next() >> 11) * (1.0 / 9007199254740992.0); }

    // uniform integer in [0, n)
    uint64_t below(uint64_t n) { return n ? next() % n : 0; }

    // standard normal by Box-Muller (one value per call keeps the state simple to checkpoint)
    double normal() {
        double u1 = uniform(), u2 = uniform();
        if (u1 < 1e-300) u1 = 1e-300;
        return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
    }
};

}  // namespace diloco
