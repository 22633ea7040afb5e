#include "data/prepare.h"

#include <cstdio>
#include <filesystem>
#include <sstream>

#include "data/io.h"
#include "data/shard.h"
#include "kernels/common.h"

namespace fs = std::filesystem;

namespace diloco {

static void write_split(const std::string& dir, const std::string& split,
                        const std::vector<uint16_t>& tokens, size_t shard_tokens) {
    size_t nshards = 0;
    for (size_t start = 0; start < tokens.size(); start += shard_tokens, nshards++) {
        char name[64];
        std::snprintf(name, sizeof name, "%s_%06zu.bin", split.c_str(), nshards);
        write_shard(dir + "/" + name, tokens.data() + start, std::min(shard_tokens, tokens.size() - start));
    }
}

void prepare_dataset(const PrepareOptions& opt) {
    DILOCO_CHECK(opt.tokenizer == "byte",
                 "unknown tokenizer '" + opt.tokenizer + "' (prepare supports: byte; bring GPT-2 "
                 "tokens as llm.c shards)");
    DILOCO_CHECK(opt.val_fraction > 0.0 && opt.val_fraction < 1.0,
                 "--val-fraction must be in (0, 1), got " + std::to_string(opt.val_fraction));
    DILOCO_CHECK(!opt.inputs.empty(), "prepare needs at least one --input file");
    std::vector<uint16_t> train, val;
    std::ostringstream inputs_json;
    for (size_t i = 0; i < opt.inputs.size(); i++) {
        const std::string& path = opt.inputs[i];
        DILOCO_CHECK(fs::is_regular_file(path), "input " + path + " does not exist or is not a file");
        const std::string text = read_text_file(path);
        DILOCO_CHECK(text.size() >= 2, "input " + path + " is empty");
        size_t nval = (size_t)(text.size() * opt.val_fraction);
        if (nval == 0) nval = 1;
        const size_t ntrain = text.size() - nval;
        inputs_json << (i ? ", " : "") << "{\"path\": \"" << fs::path(path).filename().string()
                    << "\", \"train_begin\": " << train.size() << ", \"train_tokens\": " << ntrain
                    << ", \"val_tokens\": " << nval << "}";
        for (size_t k = 0; k < text.size(); k++)
            (k < ntrain ? train : val).push_back((uint8_t)text[k]);
        std::fprintf(stderr, "prepare: %s: %zu bytes -> %zu train + %zu val tokens\n", path.c_str(),
                     text.size(), ntrain, nval);
    }
    fs::create_directories(opt.out_dir);
    write_split(opt.out_dir, "train", train, opt.shard_tokens);
    write_split(opt.out_dir, "val", val, opt.shard_tokens);
    std::ostringstream meta;
    meta << "{\"tokenizer\": \"byte\", \"vocab\": 256, \"train_tokens\": " << train.size()
         << ", \"val_tokens\": " << val.size() << ", \"inputs\": [" << inputs_json.str() << "]}\n";
    write_file_atomic(opt.out_dir + "/meta.json", meta.str());
    std::fprintf(stderr, "prepare: wrote %zu train and %zu val tokens to %s\n", train.size(),
                 val.size(), opt.out_dir.c_str());
}

}  // namespace diloco
