// Comm::ordered_sum_in_group (comm/comm.h): a sum whose rounding does not depend on the layout.
#include <chrono>
#include <cstring>
#include <thread>

#include "comm/comm.h"
#include "kernels/common.h"

#ifdef DILOCO_HAVE_MPI
#include <mpi.h>
#endif

namespace diloco {

namespace {

// acc (count floats, starting at 0) plus each of `parts` parts in order; part q's chunk lies at
// parts + q * stride.
void fold_parts(const float* parts, int nparts, size_t stride, size_t count, float* acc) {
    for (size_t i = 0; i < count; i++) acc[i] = 0.0f;
    for (int q = 0; q < nparts; q++)
        for (size_t i = 0; i < count; i++) acc[i] += parts[(size_t)q * stride + i];
}

#ifdef DILOCO_HAVE_MPI
double clock_seconds() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
#endif

}  // namespace

void Comm::ordered_sum_in_group(int group, const float* parts, const std::vector<int>& parts_of, size_t n, float* out) {
    const int P = group_size(group);
    DILOCO_CHECK((int)parts_of.size() == P, "ordered_sum_in_group: one part count per member");
    if (P == 1) return fold_parts(parts, parts_of[0], n, n, out);
#ifdef DILOCO_HAVE_MPI
    const MPI_Comm c = *static_cast<MPI_Comm*>(groups_[group]);
    int me = 0;
    MPI_Comm_rank(c, &me);
    DILOCO_CHECK(n * (size_t)std::max(parts_of[me], 1) < (1u << 31) / 2, "ordered_sum_in_group: too many floats for one call");
    const double t0 = clock_seconds();
    const int mine = parts_of[me];
    std::vector<int> scount(P), sdispl(P), rcount(P), rdispl(P), len(P), begin(P);
    for (int j = 0; j < P; j++) {
        const Slice s = slice_of(n, P, j);
        len[j] = (int)s.count, begin[j] = (int)s.begin;
    }
    // to member j: chunk j of each of my parts; from member i: its parts' chunk `me`
    std::vector<float> send((size_t)mine * n), recv(0);
    int at = 0, total = 0;
    for (int j = 0; j < P; j++) {
        scount[j] = mine * len[j], sdispl[j] = at;
        for (int q = 0; q < mine; q++, at += len[j])
            std::memcpy(send.data() + at, parts + (size_t)q * n + begin[j], sizeof(float) * len[j]);
        rcount[j] = parts_of[j] * len[me], rdispl[j] = total;
        total += rcount[j];
    }
    recv.resize(total);
    MPI_Alltoallv(send.data(), scount.data(), sdispl.data(), MPI_FLOAT, recv.data(), rcount.data(), rdispl.data(),
                  MPI_FLOAT, c);
    std::vector<float> chunk(len[me]);
    fold_parts(recv.data(), total / std::max(len[me], 1), len[me], len[me], chunk.data());
    if (len[me] == 0) chunk.clear();
    MPI_Allgatherv(chunk.data(), len[me], MPI_FLOAT, out, len.data(), begin.data(), MPI_FLOAT, c);
    const uint64_t bytes = 4ull * ((uint64_t)mine * (n - len[me]) + (uint64_t)len[me] * (P - 1));
    bytes_outer_ += bytes;
    const double d = t0 + link_seconds(bytes) - clock_seconds();
    if (d > 0) std::this_thread::sleep_for(std::chrono::duration<double>(d));
#else
    throw Error("ordered_sum_in_group: a group of several members needs MPI");
#endif
}

}  // namespace diloco
