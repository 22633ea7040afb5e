#include "model/checkpoint.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>

#include "data/io.h"
#include "kernels/common.h"

namespace fs = std::filesystem;

namespace diloco {

static const char kMagic[8] = {'D', 'I', 'L', 'O', 'C', 'O', 'C', 'K'};
static const uint32_t kVersion = 1, kVersionExtra = 2, kVersionTokenizer = 3, kVersionLayout = 4;
static const uint32_t kMaxTokenizerName = 64;
static const size_t kHeaderBytes = 24;
static const size_t kFixedPayload = 5 * 4 + 8 + 8 + 8 + 4 * 8;
static const int32_t kMaxLayout = 1 << 20;  // workers, ranks per worker: far beyond any job

// The layout is written when it says something a reader cannot assume: several ranks, or a run
// resized once (its data origin).
static bool needs_layout(const TrainState& s) {
    return s.workers > 0 && ((int64_t)s.workers * s.ranks_per_worker > 1 || s.row_origin != 0 || s.origin_step != 0);
}

namespace {
struct Writer {
    std::vector<char> buf;
    template <typename T>
    void put(const T& v) { put_bytes(&v, sizeof v); }
    void put_bytes(const void* p, size_t n) {
        const char* c = static_cast<const char*>(p);
        buf.insert(buf.end(), c, c + n);
    }
};
struct Reader {
    const char* p;
    size_t left;
    std::string path;
    template <typename T>
    T get() {
        T v;
        get_bytes(&v, sizeof v);
        return v;
    }
    void get_bytes(void* out, size_t n) {
        DILOCO_CHECK(n <= left, "checkpoint " + path + " is truncated");
        if (n == 0) return;  // an empty extra array has no storage: memcpy to null is undefined
        std::memcpy(out, p, n);
        p += n;
        left -= n;
    }
};
}  // namespace

void save_checkpoint(const std::string& path, const GPTConfig& c, const TrainState& s,
                     const float* params, const float* adam_m, const float* adam_v, size_t n,
                     const std::vector<std::vector<float>>& extra, const TokenizerBlob& tokenizer) {
    const bool with_tokenizer = !tokenizer.name.empty();
    DILOCO_CHECK(tokenizer.name.size() <= kMaxTokenizerName, "tokenizer name '" + tokenizer.name + "' is too long");
    Writer w;
    w.buf.reserve(kHeaderBytes + kFixedPayload + 12 * n + tokenizer.model.size());
    w.put_bytes(kMagic, 8);
    const bool with_layout = needs_layout(s);
    w.put(with_layout ? kVersionLayout : with_tokenizer ? kVersionTokenizer : extra.empty() ? kVersion : kVersionExtra);
    w.put(uint32_t(0));  // crc, filled below
    w.put(uint64_t(0));  // payload bytes, filled below
    for (int v : {c.vocab, c.max_seq_len, c.n_layer, c.n_head, c.d_model}) w.put(int32_t(v));
    w.put(uint64_t(n));
    w.put(s.step);
    w.put(s.data_cursor);
    for (uint64_t r : s.rng) w.put(r);
    w.put_bytes(params, 4 * n);
    w.put_bytes(adam_m, 4 * n);
    w.put_bytes(adam_v, 4 * n);
    if (!extra.empty() || with_tokenizer || with_layout) {
        w.put(uint64_t(extra.size()));
        for (const auto& e : extra) {
            w.put(uint64_t(e.size()));
            w.put_bytes(e.data(), 4 * e.size());
        }
    }
    if (with_tokenizer) {
        w.put(uint32_t(tokenizer.name.size()));
        w.put_bytes(tokenizer.name.data(), tokenizer.name.size());
        w.put(uint64_t(tokenizer.model.size()));
        w.put_bytes(tokenizer.model.data(), tokenizer.model.size());
    } else if (with_layout) {
        w.put(uint32_t(0));  // no tokenizer
    }
    if (with_layout) {
        w.put(int32_t(s.workers));
        w.put(int32_t(s.ranks_per_worker));
        w.put(s.row_origin);
        w.put(s.origin_step);
    }
    const uint64_t payload = w.buf.size() - kHeaderBytes;
    const uint32_t crc = crc32_update(0, w.buf.data() + kHeaderBytes, payload);
    std::memcpy(w.buf.data() + 12, &crc, 4);
    std::memcpy(w.buf.data() + 16, &payload, 8);
    const fs::path parent = fs::path(path).parent_path();
    if (!parent.empty()) fs::create_directories(parent);
    write_file_atomic(path, w.buf.data(), w.buf.size());
}

// Every length is checked against the bytes left before anything is allocated for it.
static void read_extras(Reader& r, std::vector<std::vector<float>>& extra) {
    const uint64_t count = r.get<uint64_t>();
    DILOCO_CHECK(count <= r.left / 8, "checkpoint " + r.path + " lists more extra arrays than it holds");
    for (uint64_t k = 0; k < count; k++) {
        const uint64_t len = r.get<uint64_t>();
        DILOCO_CHECK(len <= r.left / 4, "checkpoint " + r.path + " has an extra array longer than the file");
        extra.emplace_back(len);
        r.get_bytes(extra.back().data(), 4 * len);
    }
}

static void read_tokenizer(Reader& r, TokenizerBlob& tok, bool optional) {
    const std::string where = "checkpoint " + r.path + " has a corrupt tokenizer section: ";
    const uint32_t name_len = r.get<uint32_t>();
    if (optional && name_len == 0) return;
    DILOCO_CHECK(name_len >= 1 && name_len <= kMaxTokenizerName && name_len <= r.left,
                 where + "a name of " + std::to_string(name_len) + " bytes");
    tok.name.resize(name_len);
    r.get_bytes(tok.name.data(), name_len);
    for (char c : tok.name)
        DILOCO_CHECK((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_', where + "a name that is not [a-z0-9_]");
    DILOCO_CHECK(r.left >= 8, where + "it ends before the model's length");
    const uint64_t model_len = r.get<uint64_t>();
    DILOCO_CHECK(model_len <= r.left, where + "a model of " + std::to_string(model_len) + " bytes, " +
                                          std::to_string(r.left) + " left in the file");
    tok.model.resize(model_len);
    r.get_bytes(tok.model.data(), model_len);
}

static void read_layout(Reader& r, TrainState& s) {
    s.workers = r.get<int32_t>();
    s.ranks_per_worker = r.get<int32_t>();
    s.row_origin = r.get<uint64_t>();
    s.origin_step = r.get<int64_t>();
    DILOCO_CHECK(s.workers >= 1 && s.workers <= kMaxLayout && s.ranks_per_worker >= 1 && s.ranks_per_worker <= kMaxLayout,
                 "checkpoint " + r.path + " has a corrupt layout: " + std::to_string(s.workers) + " workers of " +
                     std::to_string(s.ranks_per_worker) + " ranks");
    DILOCO_CHECK(s.origin_step >= 0 && s.origin_step <= s.step,
                 "checkpoint " + r.path + " has a corrupt layout: origin step " + std::to_string(s.origin_step) +
                     " beyond its step " + std::to_string(s.step));
}

Checkpoint load_checkpoint(const std::string& path) {
    std::ifstream f(path, std::ios::binary | std::ios::ate);
    DILOCO_CHECK(f, "cannot open checkpoint " + path);
    const size_t bytes = (size_t)f.tellg();
    DILOCO_CHECK(bytes >= kHeaderBytes, "checkpoint " + path + " is truncated (" +
                                            std::to_string(bytes) + " bytes)");
    std::vector<char> buf(bytes);
    f.seekg(0);
    f.read(buf.data(), (std::streamsize)bytes);
    DILOCO_CHECK(f, "cannot read checkpoint " + path);
    return parse_checkpoint(buf.data(), bytes, path);
}

Checkpoint parse_checkpoint(const char* data, size_t bytes, const std::string& path) {
    DILOCO_CHECK(bytes >= kHeaderBytes, "checkpoint " + path + " is truncated (" +
                                            std::to_string(bytes) + " bytes)");
    DILOCO_CHECK(std::memcmp(data, kMagic, 8) == 0, path + " is not a diloco checkpoint (bad magic)");
    uint32_t version, crc;
    uint64_t payload;
    std::memcpy(&version, data + 8, 4);
    std::memcpy(&crc, data + 12, 4);
    std::memcpy(&payload, data + 16, 8);
    DILOCO_CHECK(version >= kVersion && version <= kVersionLayout,
                 "checkpoint " + path + " has version " + std::to_string(version) + "; this build reads versions 1 to 4");
    DILOCO_CHECK(payload == bytes - kHeaderBytes,
                 "checkpoint " + path + " is truncated: header says " + std::to_string(payload) +
                     " payload bytes, file holds " + std::to_string(bytes - kHeaderBytes));
    DILOCO_CHECK(crc32_update(0, data + kHeaderBytes, payload) == crc,
                 "checkpoint " + path + " is corrupt (CRC32 mismatch)");
    Reader r{data + kHeaderBytes, payload, path};
    Checkpoint ck;
    GPTConfig& c = ck.config;
    c.vocab = r.get<int32_t>();
    c.max_seq_len = r.get<int32_t>();
    c.n_layer = r.get<int32_t>();
    c.n_head = r.get<int32_t>();
    c.d_model = r.get<int32_t>();
    try {
        c.validate();
    } catch (const Error& e) {
        throw Error("checkpoint " + path + " holds an invalid config: " + e.what());
    }
    const uint64_t n = r.get<uint64_t>(), implied = gpt_param_count(c);
    DILOCO_CHECK(n == implied, "checkpoint " + path + " holds " + std::to_string(n) +
                                   " parameters but its config implies " + std::to_string(implied));
    DILOCO_CHECK(version > kVersion ? payload >= kFixedPayload + 12 * n + 8 : payload == kFixedPayload + 12 * n,
                 "checkpoint " + path + " has a bad size");
    ck.state.step = r.get<int64_t>();
    ck.state.data_cursor = r.get<uint64_t>();
    for (auto& x : ck.state.rng) x = r.get<uint64_t>();
    ck.params.resize(n);
    ck.adam_m.resize(n);
    ck.adam_v.resize(n);
    r.get_bytes(ck.params.data(), 4 * n);
    r.get_bytes(ck.adam_m.data(), 4 * n);
    r.get_bytes(ck.adam_v.data(), 4 * n);
    if (version > kVersion) read_extras(r, ck.extra);
    if (version >= kVersionTokenizer) read_tokenizer(r, ck.tokenizer, version == kVersionLayout);
    if (version == kVersionLayout) read_layout(r, ck.state);
    DILOCO_CHECK(r.left == 0, "checkpoint " + path + " has " + std::to_string(r.left) + " unread bytes");
    return ck;
}

std::string checkpoint_path(const std::string& rundir, int64_t step) {
    char name[64];
    std::snprintf(name, sizeof name, "step_%08lld.ckpt", (long long)step);
    return rundir + "/ckpt/" + name;
}

// The steps of the files in `dir` named step_NNNNNNNN followed by `suffix` (a regex), ascending.
static std::vector<int64_t> checkpoint_steps(const std::string& dir, const std::string& suffix) {
    std::vector<int64_t> steps;
    if (!fs::is_directory(dir)) return steps;
    const std::regex name("step_(\\d{8})" + suffix);
    for (const auto& e : fs::directory_iterator(dir)) {
        std::smatch mt;
        const std::string fn = e.path().filename().string();
        if (std::regex_match(fn, mt, name)) steps.push_back(std::stoll(mt[1]));
    }
    std::sort(steps.begin(), steps.end());
    return steps;
}

std::string latest_checkpoint(const std::string& rundir) {
    const std::vector<int64_t> steps = checkpoint_steps(rundir + "/ckpt", "\\.ckpt");
    return steps.empty() ? "" : checkpoint_path(rundir, steps.back());
}

}  // namespace diloco

namespace diloco {

std::string rank_checkpoint_path(const std::string& rundir, int64_t step, int rank) {
    char name[64];
    std::snprintf(name, sizeof name, "step_%08lld.rank_%05d.ckpt", (long long)step, rank);
    return rundir + "/ckpt/" + name;
}

int64_t latest_rank_checkpoint_step(const std::string& rundir, int rank) {
    const std::vector<int64_t> steps = checkpoint_steps_of(rundir, rank);
    return steps.empty() ? -1 : steps.back();
}

std::vector<int64_t> checkpoint_steps_of(const std::string& rundir, int rank) {
    char suffix[48] = "\\.ckpt";
    if (rank >= 0) std::snprintf(suffix, sizeof suffix, "\\.rank_%05d\\.ckpt", rank);
    return checkpoint_steps(rundir + "/ckpt", suffix);
}

void prune_checkpoints(const std::string& rundir, int keep, int rank) {
    if (keep <= 0) return;
    char suffix[48] = "\\.ckpt";
    if (rank >= 0) std::snprintf(suffix, sizeof suffix, "\\.rank_%05d\\.ckpt", rank);
    const std::vector<int64_t> steps = checkpoint_steps(rundir + "/ckpt", suffix);
    for (size_t i = 0; i + keep < steps.size(); i++)
        fs::remove(rank >= 0 ? rank_checkpoint_path(rundir, steps[i], rank) : checkpoint_path(rundir, steps[i]));
}

}  // namespace diloco
