#include <gtest/gtest.h>
TEST(Placeholder3, Builds) { EXPECT_EQ(1, 1); }
