#include "model/llmc.h"

#include <cstring>

#include "data/io.h"
#include "kernels/common.h"

namespace diloco {

int llmc_padded_vocab(int vocab) { return (vocab + 127) / 128 * 128; }

namespace {

// Visits llm.c's tensors in file order: fn(llmc_offset, our_offset, count) for every contiguous
// piece. `Vp` rows of wte exist in the llm.c file; only the first `vocab` are ours.
template <typename Fn>
size_t for_each_piece(const GPT& m, Fn fn) {
    const GPTConfig& c = m.config;
    const size_t C = c.d_model, L = c.n_layer, Vp = llmc_padded_vocab(c.vocab);
    size_t off = 0;
    fn(off, m.wte, (size_t)c.vocab * C);
    off += Vp * C;
    fn(off, m.wpe, (size_t)c.max_seq_len * C);
    off += (size_t)c.max_seq_len * C;
    // per-layer tensors, stacked: member of BlockParams and its size
    const std::pair<size_t BlockParams::*, size_t> stacked[] = {
        {&BlockParams::ln1w, C},         {&BlockParams::ln1b, C},
        {&BlockParams::qkvw, 3 * C * C}, {&BlockParams::qkvb, 3 * C},
        {&BlockParams::attprojw, C * C}, {&BlockParams::attprojb, C},
        {&BlockParams::ln2w, C},         {&BlockParams::ln2b, C},
        {&BlockParams::fcw, 4 * C * C},  {&BlockParams::fcb, 4 * C},
        {&BlockParams::fcprojw, 4 * C * C}, {&BlockParams::fcprojb, C},
    };
    for (const auto& [member, n] : stacked)
        for (size_t l = 0; l < L; l++) {
            fn(off, m.blocks[l].*member, n);
            off += n;
        }
    fn(off, m.lnfw, C);
    off += C;
    fn(off, m.lnfb, C);
    off += C;
    return off;
}

}  // namespace

std::vector<float> to_llmc_layout(const GPT& m, const float* flat) {
    std::vector<float> out(for_each_piece(m, [](size_t, size_t, size_t) {}), 0.0f);
    for_each_piece(m, [&](size_t lo, size_t ours, size_t n) { std::memcpy(&out[lo], flat + ours, 4 * n); });
    return out;
}

void write_llmc(const std::string& path, const GPT& m, const float* flat) {
    const GPTConfig& c = m.config;
    const std::vector<float> body = to_llmc_layout(m, flat);
    std::vector<char> buf(1024 + 4 * body.size(), 0);
    int32_t header[256] = {0};
    header[0] = kLlmcMagic;
    header[1] = kLlmcVersionFp32;
    header[2] = c.max_seq_len;
    header[3] = c.vocab;
    header[4] = c.n_layer;
    header[5] = c.n_head;
    header[6] = c.d_model;
    header[7] = llmc_padded_vocab(c.vocab);
    std::memcpy(buf.data(), header, sizeof header);
    std::memcpy(buf.data() + 1024, body.data(), 4 * body.size());
    write_file_atomic(path, buf.data(), buf.size());
}

LlmcModel read_llmc(const std::string& path) {
    const std::string bytes = read_text_file(path);
    return parse_llmc(bytes.data(), bytes.size(), path);
}

LlmcModel parse_llmc(const char* data, size_t bytes, const std::string& path) {
    DILOCO_CHECK(bytes >= 1024, path + " is truncated: shorter than llm.c's 1024-byte header");
    int32_t h[256];
    std::memcpy(h, data, sizeof h);
    DILOCO_CHECK(h[0] == kLlmcMagic, path + ": bad magic " + std::to_string(h[0]) +
                                         " (an llm.c model file starts with 20240326)");
    DILOCO_CHECK(h[1] == kLlmcVersionFp32, path + ": version " + std::to_string(h[1]) +
                                               " is not supported (only 3, fp32; version 5 is bf16)");
    LlmcModel out;
    out.config = GPTConfig{h[3], h[2], h[4], h[5], h[6]};
    try {
        out.config.validate();
    } catch (const Error& e) {
        throw Error(path + ": bad header: " + e.what());
    }
    DILOCO_CHECK(h[7] >= h[3] && h[7] - h[3] < 1 << 16,
                 path + ": padded vocab " + std::to_string(h[7]) + " is smaller than vocab " +
                     std::to_string(h[3]) + " or implausibly padded");
    // the file may pad to another multiple than ours: compute sizes from its own Vp. Its size is
    // checked before anything is built or allocated for the model its header describes.
    const size_t C = out.config.d_model, Vp = (size_t)h[7], V = out.config.vocab;
    const size_t ours_padded = (size_t)llmc_padded_vocab(out.config.vocab);
    const size_t n_ours = gpt_param_count(out.config) + (ours_padded - V) * C;
    const size_t n_file = n_ours - ours_padded * C + Vp * C;
    DILOCO_CHECK(bytes == 1024 + 4 * n_file, path + ": size " + std::to_string(bytes) + " bytes, but its header implies " +
                                                 std::to_string(1024 + 4 * n_file));
    GPT m;
    gpt_layout(m, out.config);
    std::vector<float> body(n_file);
    std::memcpy(body.data(), data + 1024, 4 * n_file);
    for (size_t i = V * C; i < Vp * C; i++)
        if (body[i] != 0.0f) out.padding_was_zero = false;
    // shift everything after wte so that the body has our padding, then permute
    if (Vp != ours_padded) {
        std::vector<float> re(n_ours, 0.0f);
        std::memcpy(re.data(), body.data(), 4 * V * C);
        std::memcpy(re.data() + ours_padded * C, body.data() + Vp * C, 4 * (n_file - Vp * C));
        body.swap(re);
    }
    out.params.assign(m.num_params, 0.0f);
    for_each_piece(m, [&](size_t lo, size_t ours, size_t n) { std::memcpy(&out.params[ours], &body[lo], 4 * n); });
    return out;
}

}  // namespace diloco
