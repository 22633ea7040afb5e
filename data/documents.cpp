#include "data/documents.h"

#include <cstring>

#include "data/io.h"
#include "kernels/common.h"

namespace diloco {

std::string documents_path(const std::string& dir, const std::string& split) { return dir + "/" + split + ".docs"; }

void write_documents(const std::string& path, const std::vector<uint64_t>& starts, uint64_t total) {
    DILOCO_CHECK(!starts.empty() && starts.size() < (size_t)INT32_MAX, "a document index needs 1 to 2^31-2 documents");
    std::string bytes(16 + 8 * (starts.size() + 1), '\0');
    const int32_t header[4] = {kDocsMagic, kDocsVersion, (int32_t)starts.size(), 0};
    std::memcpy(bytes.data(), header, 16);
    std::memcpy(bytes.data() + 16, starts.data(), 8 * starts.size());
    std::memcpy(bytes.data() + 16 + 8 * starts.size(), &total, 8);
    write_file_atomic(path, bytes);
}

std::vector<TokenRange> parse_documents(const void* data, size_t bytes, uint64_t total, const std::string& path) {
    DILOCO_CHECK(bytes >= 16, path + " is too short for a document index header (" + std::to_string(bytes) + " bytes)");
    int32_t header[4];
    std::memcpy(header, data, 16);
    DILOCO_CHECK(header[0] == kDocsMagic, path + " is not a document index (bad magic)");
    DILOCO_CHECK(header[1] == kDocsVersion, path + ": unsupported document index version " + std::to_string(header[1]));
    DILOCO_CHECK(header[2] > 0, path + ": document count " + std::to_string(header[2]) + " is not positive");
    const uint64_t n = (uint64_t)header[2];
    // the size is checked against the count before anything is allocated
    DILOCO_CHECK(bytes == 16 + 8 * (n + 1), path + " holds " + std::to_string(bytes) + " bytes but its header says " +
                                                 std::to_string(n) + " documents (" + std::to_string(16 + 8 * (n + 1)) +
                                                 " bytes)");
    std::vector<uint64_t> at(n + 1);
    std::memcpy(at.data(), (const char*)data + 16, 8 * (n + 1));
    DILOCO_CHECK(at[0] == 0, path + ": the first document does not start at token 0");
    DILOCO_CHECK(at[n] == total, path + " ends at token " + std::to_string(at[n]) + " but the split holds " +
                                     std::to_string(total) + " tokens: it belongs to other shards");
    std::vector<TokenRange> docs(n);
    for (uint64_t i = 0; i < n; i++) {
        DILOCO_CHECK(at[i] < at[i + 1], path + ": document " + std::to_string(i) + " is empty or out of order");
        docs[i] = {at[i], at[i + 1]};
    }
    return docs;
}

std::vector<TokenRange> read_documents(const std::string& path, uint64_t total) {
    const std::string bytes = read_text_file(path);
    return parse_documents(bytes.data(), bytes.size(), total, path);
}

std::vector<size_t> paragraph_starts(const std::string& text) {
    std::vector<size_t> starts{0};
    for (size_t i = 2; i < text.size(); i++)
        if (text[i - 1] == '\n' && text[i - 2] == '\n' && text[i] != '\n') starts.push_back(i);
    return starts;
}

}  // namespace diloco
