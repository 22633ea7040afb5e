// Test helpers: random inputs, NaN poisoning, and tolerance checks that report the worst element.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "kernels/rng.h"

namespace diloco::test {

constexpr double kU32 = 5.960464477539063e-08;  // unit roundoff of fp32, 2^-24

inline std::vector<float> randn(size_t n, Rng& rng, double scale = 1.0) {
    std::vector<float> v(n);
    for (auto& x : v) x = (float)(rng.normal() * scale);
    return v;
}

inline std::vector<double> to_double(const std::vector<float>& v) {
    return std::vector<double>(v.begin(), v.end());
}

inline std::vector<float> poisoned(size_t n) {
    return std::vector<float>(n, std::numeric_limits<float>::quiet_NaN());
}

// Checks |got - ref| <= tol(i) for every element; a NaN (an unwritten poisoned element) fails.
// Reports the count of bad elements and the worst one.
template <typename Tol>
::testing::AssertionResult all_close(const std::string& what, const float* got, const double* ref,
                                     size_t n, Tol tol) {
    size_t bad = 0, worst = 0;
    double worst_ratio = 0.0;
    for (size_t i = 0; i < n; i++) {
        const double err = std::fabs((double)got[i] - ref[i]);
        const double t = tol(i);
        const double ratio = std::isnan(err) ? INFINITY : err / t;
        if (!(err <= t)) bad++;
        if (ratio > worst_ratio || (bad == 1 && !(err <= t) && worst_ratio == 0.0)) {
            worst_ratio = ratio;
            worst = i;
        }
    }
    if (bad == 0) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure()
           << what << ": " << bad << " of " << n << " elements out of tolerance; worst at " << worst
           << ": got " << got[worst] << ", want " << ref[worst] << ", tol " << tol(worst);
}

// Tolerance atol + rtol * |ref_i|.
inline ::testing::AssertionResult close_rel(const std::string& what, const std::vector<float>& got,
                                            const std::vector<double>& ref, double rtol,
                                            double atol) {
    if (got.size() != ref.size()) return ::testing::AssertionFailure() << what << ": size mismatch";
    return all_close(what, got.data(), ref.data(), got.size(),
                     [&](size_t i) { return atol + rtol * std::fabs(ref[i]); });
}

// Tolerance scaled by the largest reference magnitude: for outputs that are sums whose rounding
// error follows the size of the terms rather than of the (possibly cancelled) result.
inline ::testing::AssertionResult close_max(const std::string& what, const std::vector<float>& got,
                                            const std::vector<double>& ref, double rel_to_max) {
    double mx = 0.0;
    for (double r : ref) mx = std::max(mx, std::fabs(r));
    const double t = rel_to_max * (mx > 0 ? mx : 1.0);
    if (got.size() != ref.size()) return ::testing::AssertionFailure() << what << ": size mismatch";
    return all_close(what, got.data(), ref.data(), got.size(), [&](size_t) { return t; });
}

// Per named tensor of a flat model buffer (parameters or gradients): ||got - ref||_2 <= rel *
// ||ref||_2 + abs, over each tensor's elements. For results that are sums of the same terms in
// another order, whose error follows the tensor's size rather than any one element's.
template <typename Tensors>
::testing::AssertionResult close_per_tensor(const std::string& what, const Tensors& tensors, const float* got,
                                            const float* ref, double rel, double abs = 0.0) {
    for (const auto& t : tensors) {
        double diff = 0.0, norm = 0.0;
        for (size_t i = t.offset; i < t.offset + t.numel(); i++) {
            diff += std::pow((double)got[i] - ref[i], 2);
            norm += std::pow((double)ref[i], 2);
        }
        if (!(std::sqrt(diff) <= rel * std::sqrt(norm) + abs))
            return ::testing::AssertionFailure() << what << ": tensor " << t.name << " differs by "
                                                 << std::sqrt(diff) << " in norm, " << std::sqrt(diff / norm)
                                                 << " relative (tolerance " << rel << ")";
    }
    return ::testing::AssertionSuccess();
}

}  // namespace diloco::test
