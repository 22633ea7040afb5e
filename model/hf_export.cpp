#include "model/hf_export.h"

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <sstream>
#include <vector>

#include "data/io.h"
#include "kernels/common.h"

namespace fs = std::filesystem;

namespace diloco {

namespace {

// transformers' name for one of our tensors, and whether it is stored transposed (Conv1D)
struct HfName {
    std::string name;
    bool transpose;
};

HfName hf_name(const std::string& ours) {
    if (ours == "wte") return {"transformer.wte.weight", false};
    if (ours == "wpe") return {"transformer.wpe.weight", false};
    if (ours == "lnf.w") return {"transformer.ln_f.weight", false};
    if (ours == "lnf.b") return {"transformer.ln_f.bias", false};
    const size_t dot = ours.find('.', 2);  // "h.<l>." then the block's own name
    const std::string block = "transformer." + ours.substr(0, dot + 1), part = ours.substr(dot + 1);
    static const struct { const char* ours; const char* hf; bool transpose; } parts[] = {
        {"ln1.w", "ln_1.weight", false},          {"ln1.b", "ln_1.bias", false},
        {"attn.qkv.w", "attn.c_attn.weight", true}, {"attn.qkv.b", "attn.c_attn.bias", false},
        {"attn.proj.w", "attn.c_proj.weight", true}, {"attn.proj.b", "attn.c_proj.bias", false},
        {"ln2.w", "ln_2.weight", false},          {"ln2.b", "ln_2.bias", false},
        {"mlp.fc.w", "mlp.c_fc.weight", true},    {"mlp.fc.b", "mlp.c_fc.bias", false},
        {"mlp.proj.w", "mlp.c_proj.weight", true}, {"mlp.proj.b", "mlp.c_proj.bias", false},
    };
    for (const auto& p : parts)
        if (part == p.ours) return {block + p.hf, p.transpose};
    throw Error("hf export: no transformers name for tensor '" + ours + "'");
}

std::string config_json(const GPTConfig& c) {
    std::ostringstream s;
    const bool gpt2_vocab = c.vocab == 50257;  // GPT-2's tokenizer: <|endoftext|> is 50256
    s << "{\n"
      << "  \"architectures\": [\"GPT2LMHeadModel\"],\n"
      << "  \"model_type\": \"gpt2\",\n"
      << "  \"vocab_size\": " << c.vocab << ",\n"
      << "  \"n_positions\": " << c.max_seq_len << ",\n"
      << "  \"n_ctx\": " << c.max_seq_len << ",\n"
      << "  \"n_embd\": " << c.d_model << ",\n"
      << "  \"n_layer\": " << c.n_layer << ",\n"
      << "  \"n_head\": " << c.n_head << ",\n"
      << "  \"n_inner\": null,\n"
      << "  \"activation_function\": \"gelu_new\",\n"
      << "  \"layer_norm_epsilon\": 1e-05,\n"
      << "  \"resid_pdrop\": 0.0,\n  \"embd_pdrop\": 0.0,\n  \"attn_pdrop\": 0.0,\n"
      << "  \"initializer_range\": 0.02,\n"
      << "  \"scale_attn_weights\": true,\n"
      << "  \"tie_word_embeddings\": true,\n"
      << "  \"bos_token_id\": " << (gpt2_vocab ? "50256" : "null") << ",\n"
      << "  \"eos_token_id\": " << (gpt2_vocab ? "50256" : "null") << ",\n"
      << "  \"torch_dtype\": \"float32\"\n"
      << "}\n";
    return s.str();
}

}  // namespace

void write_hf(const std::string& dir, const GPT& m, const float* params) {
    DILOCO_CHECK(!fs::exists(dir) || (fs::is_directory(dir) && fs::is_empty(dir)),
                 "export --format hf: " + dir + " exists and is not an empty directory (nothing overwritten)");
    fs::create_directories(dir);
    // safetensors: u64 header length, the JSON header (names, dtype, shape, byte range in the data),
    // then the data; the header is padded with spaces so the data starts 8-byte aligned
    std::ostringstream header;
    std::vector<float> data;
    data.reserve(m.num_params);
    header << "{\"__metadata__\":{\"format\":\"pt\"}";
    for (const auto& t : m.tensors) {
        const HfName h = hf_name(t.name);
        const float* src = params + t.offset;
        const size_t begin = data.size() * 4;
        std::vector<size_t> shape(t.shape.begin(), t.shape.end());
        if (h.transpose) {  // (out, in) -> (in, out)
            const size_t rows = shape[0], cols = shape[1];
            for (size_t j = 0; j < cols; j++)
                for (size_t i = 0; i < rows; i++) data.push_back(src[i * cols + j]);
            std::swap(shape[0], shape[1]);
        } else {
            data.insert(data.end(), src, src + t.numel());
        }
        header << ",\"" << h.name << "\":{\"dtype\":\"F32\",\"shape\":[";
        for (size_t i = 0; i < shape.size(); i++) header << (i ? "," : "") << shape[i];
        header << "],\"data_offsets\":[" << begin << "," << data.size() * 4 << "]}";
    }
    header << "}";
    std::string h = header.str();
    h.append((8 - h.size() % 8) % 8, ' ');
    const uint64_t n = h.size();  // little-endian on every machine this builds for
    std::string file(reinterpret_cast<const char*>(&n), 8);
    file += h;
    file.append(reinterpret_cast<const char*>(data.data()), data.size() * 4);
    write_file_atomic(dir + "/model.safetensors", file);
    write_file_atomic(dir + "/config.json", config_json(m.config));
}

}  // namespace diloco
