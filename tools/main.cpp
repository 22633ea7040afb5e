// diloco: one binary for preparing data, training, evaluating, sampling and benchmarking.
// The command-line contract is in README.md.
#include <cblas.h>
#include <omp.h>

#include <sched.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstdlib>
#include <map>

#include "data/prepare.h"
#include "data/routing.h"
#include "data/tokenizer.h"
#include "kernels/common.h"
#include "model/checkpoint.h"
#include "model/hf_export.h"
#include "model/llmc.h"
#include "optim/dipaco.h"
#include "optim/generate.h"
#include "optim/train.h"
#include "tools/bench.h"
#include "tools/config_file.h"
#include "tools/train_options.h"
#ifdef DILOCO_HAVE_CUDA
#include "kernels/cuda_info.h"
#endif
#ifdef DILOCO_HAVE_MPI
#include <mpi.h>
#endif
#include "comm/comm.h"
#if defined(DILOCO_HAVE_CUDA) || defined(DILOCO_EMULATE)
#include "optim/train_cuda.h"
#endif


using namespace diloco;

// --ckpt FILE, or --run RUNDIR for the run's newest checkpoint (`used`: the subcommand ran).
static std::string checkpoint_of(const std::string& ckpt, const std::string& run, bool used) {
    if (!used || !ckpt.empty()) return ckpt;
    DILOCO_CHECK(!run.empty(), "give --ckpt FILE or --run RUNDIR");
    const std::string newest = latest_checkpoint(run);
    DILOCO_CHECK(!newest.empty(), "--run " + run + ": no checkpoint in " + run + "/ckpt");
    return newest;
}

// Under mpirun, more ranks x OpenMP threads than cores make OpenMP's spinning waits fight for the
// cores: the same run took about 325 or about 2000 ms a step on 2 cores, by chance. With the
// thread count left to OpenMP, each rank gets its share of the cores instead; a count the user
// chose is kept, with a note.
static void share_cores_among_ranks() {
    const char* local = std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE");  // Open MPI
    if (!local) local = std::getenv("MPI_LOCALNRANKS");               // MPICH
    const int ranks = local ? std::max(1, std::atoi(local)) : 1;
    // a rank that mpirun bound to some cores has them to itself; an unbound one shares the machine
    cpu_set_t set;
    const int online = (int)sysconf(_SC_NPROCESSORS_ONLN);  // omp_get_num_procs() would see the binding
    const int cores = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : online;
    const int sharing = cores < online ? 1 : ranks;
    const int threads = omp_get_max_threads();
    if (sharing * threads <= cores || threads == 1) return;  // one thread per rank has no barrier to spin in
    const char* rank = std::getenv("OMPI_COMM_WORLD_LOCAL_RANK");
    const bool speaker = !rank || std::atoi(rank) == 0;
    if (std::getenv("OMP_NUM_THREADS")) {
        if (speaker && !std::getenv("OMP_WAIT_POLICY"))
            std::fprintf(stderr, "note: %d rank%s x %d OpenMP threads (OMP_NUM_THREADS) on %d cores: set "
                                 "OMP_WAIT_POLICY=passive, or fewer threads, or steps may take several times longer\n",
                         sharing, sharing == 1 ? "" : "s", threads, cores);
        return;
    }
    const int share = std::max(1, cores / sharing);
    omp_set_num_threads(share);
    if (speaker)
        std::fprintf(stderr, "note: %d rank%s on %d cores: %d OpenMP thread%s per rank (OMP_NUM_THREADS sets another "
                             "count)\n", sharing, sharing == 1 ? "" : "s", cores, share, share == 1 ? "" : "s");
}

static void print_info() {
    std::printf("diloco %s\n", DILOCO_VERSION);
    std::printf("build: C++20, %s\n",
#ifdef NDEBUG
                "release"
#else
                "debug"
#endif
    );
    std::printf("BLAS: %s\n", openblas_get_config());
    std::printf("OpenMP threads: %d\n", omp_get_max_threads());
#ifdef DILOCO_HAVE_MPI
    std::printf("MPI: compiled in\n");
#else
    std::printf("MPI: not compiled in\n");
#endif
    std::printf("SentencePiece: %s\n", have_sentencepiece() ? "compiled in" : "not compiled in");
#if defined(DILOCO_HAVE_CUDA)
    std::printf("CUDA: compiled in; %s\n", cuda_summary().c_str());
#elif defined(DILOCO_EMULATE)
    std::printf("CUDA: emulated on the CPU (a test build: --device cuda runs the kernels' source in the emulator)\n");
#else
    std::printf("CUDA: not compiled in\n");
#endif
}

static void run_eval(const std::string& ckpt, const std::string& data, int batches, int batch, int seq_len) {
    Checkpoint ck = load_checkpoint(ckpt);
    GPT m;
    gpt_build(m, ck.config);
    m.params = std::move(ck.params);
    const int T = seq_len > 0 ? seq_len : ck.config.max_seq_len;
    DILOCO_CHECK(batch > 0 && batches > 0, "--batch and --batches must be positive");
    gpt_allocate(m, batch, T);
    std::printf("val_loss %.6f\n", evaluate(m, data, T, (long)batch * batches, batch));
}

// `eval --routed`: each validation document scored by its path's model (optim/dipaco.h), the
// paths assembled from the modules in `paths_dir` (RUNDIR/modules of a DiPaCo run), or the one
// checkpoint for all.
static void run_routed_eval(const std::string& ckpt, const std::string& paths_dir, const std::string& data, int batch,
                            int seq_len, int best_prefix) {
    DILOCO_CHECK(batch > 0, "--batch must be positive");
    std::map<int, GPT> models;
    auto model_of = [&](int p) -> GPT& {
        const int key = paths_dir.empty() ? -1 : p;
        auto it = models.find(key);
        if (it != models.end()) return it->second;
        GPT& m = models[key];
        if (paths_dir.empty()) {
            Checkpoint ck = load_checkpoint(ckpt);
            gpt_build(m, ck.config);
            m.params = std::move(ck.params);
        } else {
            m = load_path(paths_dir, p);
        }
        DILOCO_CHECK(seq_len <= m.config.max_seq_len, "--seq-len exceeds the model's max_seq_len");
        gpt_allocate(m, batch, seq_len > 0 ? seq_len : m.config.max_seq_len);
        return m;
    };
    DILOCO_CHECK(seq_len > 0, "eval --routed needs --seq-len (the training sequence length)");
    std::vector<double> per_path;
    const double loss = routed_validation_loss(data, seq_len, batch, model_of, &per_path);
    for (size_t p = 0; p < per_path.size(); p++) std::printf("path %zu val_loss %.6f\n", p, per_path[p]);
    std::printf("val_loss %.6f\n", loss);
    if (best_prefix <= 0) return;
    // both routings scored on the same tokens: those after each document's first best_prefix
    DILOCO_CHECK(best_prefix <= seq_len, "--best-prefix must be at most --seq-len");
    const std::vector<uint16_t> best = best_prefix_paths(data, best_prefix, model_of);
    const double offline = routed_validation_loss(data, seq_len, batch, model_of, nullptr, nullptr, best_prefix);
    const double by_prefix = routed_validation_loss(data, seq_len, batch, model_of, nullptr, &best, best_prefix);
    const Routes r = read_routes(routes_path(data));
    size_t moved = 0;
    for (size_t d = 0; d < best.size(); d++) moved += best[d] != r.val[d];
    std::printf("after the first %d tokens: offline routing val_loss %.6f; best path on them val_loss %.6f "
                "(%zu of %zu documents change path)\n", best_prefix, offline, by_prefix, moved, best.size());
}

static void run_export(const std::string& ckpt, const std::string& out, const std::string& format) {
    Checkpoint ck = load_checkpoint(ckpt);
    GPT m;
    gpt_build(m, ck.config);
    if (format == "hf")
        write_hf(out, m, ck.params.data());
    else
        write_llmc(out, m, ck.params.data());
    std::fprintf(stderr, "export: %s -> %s (%s)\n", ckpt.c_str(), out.c_str(), ck.config.describe().c_str());
}

static void run_import(const std::string& in, const std::string& out) {
    LlmcModel lm = read_llmc(in);
    if (!lm.padding_was_zero)
        std::fprintf(stderr, "import: warning: the padded vocabulary rows of %s were not zero and were dropped\n",
                     in.c_str());
    std::vector<float> zeros(lm.params.size(), 0.0f);
    save_checkpoint(out, lm.config, TrainState{}, lm.params.data(), zeros.data(), zeros.data(), lm.params.size());
    std::fprintf(stderr, "import: %s -> %s (%s)\n", in.c_str(), out.c_str(), lm.config.describe().c_str());
}

static void add_bench_options(CLI::App* b, BenchOptions& bench) {
    b->add_option("kernel", bench.kernel, "gemm, layernorm, attention, adamw, gelu, crossentropy, quantize, train")->required();
    b->add_option("--variant", bench.variant, "kernel variant")->capture_default_str();
    b->add_option("--device", bench.device, "cpu or cuda")->capture_default_str();
    b->add_option("--matmul-precision", bench.matmul_precision, "fp32 or tf32 (tensor cores; --device cuda)")
        ->capture_default_str();
    b->add_option("--B", bench.B, "batch")->capture_default_str();
    b->add_option("--T", bench.T, "sequence length")->capture_default_str();
    b->add_option("--C", bench.C, "channels")->capture_default_str();
    b->add_option("--NH", bench.NH, "heads")->capture_default_str();
    b->add_option("--V", bench.V, "vocabulary")->capture_default_str();
    b->add_option("--M", bench.M, "gemm M")->capture_default_str();
    b->add_option("--N", bench.N, "gemm N")->capture_default_str();
    b->add_option("--K", bench.K, "gemm K")->capture_default_str();
    b->add_option("--model", bench.model, "preset for the train bench")->capture_default_str();
    b->add_option("--quant-block", bench.quant_block, "values per fp32 scale of int8, e2m1, e3m0 (quantize bench)")
        ->capture_default_str();
    b->add_option("--repeats", bench.repeats, "timed repeats (median reported)")->capture_default_str();
    b->add_option("--warmup", bench.warmup, "untimed warm-up calls")->capture_default_str();
}

// `prepare`: text files into token shards
CLI::App* add_prepare_command(CLI::App& app, PrepareOptions& prep) {
    auto* p = app.add_subcommand("prepare", "turn text files into token shards");
    p->add_option("--input", prep.inputs, "text files")->required()->expected(1, -1)->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
    p->add_option("--out", prep.out_dir, "output data directory")->required();
    p->add_option("--val-fraction", prep.val_fraction, "tail of each input kept for validation")->capture_default_str();
    p->add_option("--tokenizer", prep.tokenizer, "byte, or sp: a SentencePiece model trained on the training split")
        ->capture_default_str();
    p->add_option("--vocab-size", prep.vocab_size, "sp: vocabulary size, 258 to 65536 (default 4096)");
    p->add_option("--sp-model-type", prep.sp_model_type, "sp: bpe or unigram")->capture_default_str();
    p->add_option("--documents", prep.documents, "what a document is (DIR/*.docs, for `route`): files (each input) "
                                                 "or paragraphs (lines up to an empty line)")
        ->capture_default_str();
    return p;
}

// `route`: DiPaCo's offline routing of prepared documents
CLI::App* add_route_command(CLI::App& app, RouteOptions& route) {
    auto* ro = app.add_subcommand("route", "DiPaCo: route every document of prepared data to one of K^L paths "
                                           "(k-means tree on the histogram of its first tokens) -> DIR/routes.idx");
    ro->add_option("--data", route.data, "prepared data directory")->required();
    ro->add_option("--levels", route.levels, "L: levels of the modular model")->capture_default_str();
    ro->add_option("--modules", route.modules, "K: modules per level")->capture_default_str();
    ro->add_option("--prefix", route.prefix, "tokens of a document's beginning its feature reads")->capture_default_str();
    ro->add_option("--seed", route.seed, "k-means seed")->capture_default_str();
    ro->add_option("--ckpt", route.ckpt, "a dense model's checkpoint: route by its mean final hidden state over a "
                                         "document's first tokens instead of their byte histogram");
    return ro;
}

// `generate`: `run` names a run directory whose newest checkpoint --ckpt stands for
CLI::App* add_generate_command(CLI::App& app, GenerateOptions& gen, std::string& gen_run) {
    auto* g = app.add_subcommand("generate", "sample text from a checkpoint");
    g->footer("The text is encoded and decoded with --tokenizer-model, else with the tokenizer the checkpoint\n"
              "carries (bytes, or the SentencePiece model of data prepared with --tokenizer sp). A model\n"
              "trained on llm.c's GPT-2 shards (no meta.json, vocab 50257) carries none: without\n"
              "--tokenizer-model it starts from <|endoftext|> and prints token ids. Generation stops early\n"
              "at end-of-text when the tokenizer has one; its speed goes to stderr. Keys and values are\n"
              "cached; past max_seq_len the cache restarts on the last half window.");
    auto* g_ckpt = g->add_option("--ckpt", gen.ckpt, "checkpoint file");
    g->add_option("--run", gen_run, "run directory: its newest checkpoint")->excludes(g_ckpt);
    g->add_option("--prompt", gen.prompt, "text to continue")->capture_default_str();
    g->add_option("--tokens", gen.tokens, "tokens to generate")->capture_default_str();
    g->add_option("--temperature", gen.temperature, "0 for greedy")->capture_default_str();
    g->add_option("--seed", gen.seed, "sampling seed")->capture_default_str();
    g->add_option("--tokenizer-model", gen.tokenizer_model, "SentencePiece model file to encode and decode with");
    g->add_option("--route", gen.route_data, "DiPaCo: a data directory with routes.idx; the prompt picks its path, "
                                             "assembled from RUNDIR/modules/, replaces the checkpoint's weights");
    g->add_option("--best-prefix", gen.best_prefix, "with --route: take the path whose model gives the prompt the "
                                                    "lowest loss instead: 'prompt' (all of it) or N (its first N + 1 "
                                                    "tokens, N predictions), as eval --routed --best-prefix N");
    return g;
}

// `eval`'s options: the checkpoint (or a run's newest), the data, and DiPaCo's routed evaluation
struct EvalCommand {
    std::string ckpt, run, data, modules;
    int batches = 16, batch = 8, seq_len = 0, best_prefix = 0;
    bool routed = false;
};

CLI::App* add_eval_command(CLI::App& app, EvalCommand& ev) {
    auto* e = app.add_subcommand("eval", "validation loss of a checkpoint");
    auto* e_ckpt = e->add_option("--ckpt", ev.ckpt, "checkpoint file");
    e->add_option("--run", ev.run, "run directory: its newest checkpoint")->excludes(e_ckpt);
    e->add_option("--data", ev.data, "prepared data directory")->required();
    e->add_option("--batches", ev.batches, "batches")->capture_default_str();
    e->add_option("--batch", ev.batch, "sequences per batch")->capture_default_str();
    e->add_option("--seq-len", ev.seq_len, "sequence length (0: the model's max_seq_len)");
    e->add_flag("--routed", ev.routed, "DiPaCo: every validation document, each scored by the model of its path "
                                       "(DIR/routes.idx), as a dipaco run evaluates itself");
    e->add_option("--best-prefix", ev.best_prefix, "with --routed: also route each held-out document by the path "
                                                   "scoring its first N tokens best, and compare both routings on "
                                                   "the tokens after them");
    e->add_option("--modules", ev.modules, "with --routed: a DiPaCo run's modules (RUNDIR/modules), each path "
                                           "assembled from them; without it, the --ckpt model scores every path's "
                                           "documents");
    return e;
}

struct ExportImportCommand {
    std::string ckpt, run, out, format = "llmc";  // export
    std::string in, import_out;                   // import
};

// `export` and `import`; returns them in that order.
std::pair<CLI::App*, CLI::App*> add_export_import_commands(CLI::App& app, ExportImportCommand& x) {
    auto* ex = app.add_subcommand("export", "write a checkpoint's weights for llm.c or Hugging Face transformers");
    auto* ex_ckpt = ex->add_option("--ckpt", x.ckpt, "checkpoint file");
    ex->add_option("--run", x.run, "run directory: its newest checkpoint")->excludes(ex_ckpt);
    ex->add_option("--out", x.out, "llm.c model file (.bin), or a new directory for --format hf")->required();
    ex->add_option("--format", x.format, "llmc (llm.c's fp32 model file) or hf (config.json + "
                                         "model.safetensors for GPT2LMHeadModel.from_pretrained)")
        ->check(CLI::IsMember({"llmc", "hf"}))
        ->capture_default_str();
    auto* im = app.add_subcommand("import", "make a checkpoint (step 0, fresh optimizer) from an llm.c model file");
    im->add_option("--in", x.in, "llm.c model file (.bin)")->required();
    im->add_option("--out", x.import_out, "checkpoint file to write")->required();
    return {ex, im};
}

// Under mpirun every rank runs this program; MPI is started only for training. Returns whether it was.
bool start_mpi_for_training(int& argc, char**& argv, bool training, const TrainOptions& train) {
#ifdef DILOCO_HAVE_MPI
    if (!training) return false;
    int provided = 0;
    // a progress thread calls MPI beside the main thread (comm/progress.h); else only the main
    // thread does, and the OpenMP threads never
    const int wanted = train.comm_progress == "thread" ? MPI_THREAD_MULTIPLE : MPI_THREAD_FUNNELED;
    if (train.on_worker_loss == "continue") Comm::request_failure_detector();
    MPI_Init_thread(&argc, &argv, wanted, &provided);
    return true;
#else
    (void)argc, (void)argv, (void)training, (void)train;
    return false;
#endif
}

// Parses argv (config files expanded); returns -1 to go on, or the exit code of help or an error.
int parse_command_line(CLI::App& app, int argc, char** argv) {
    try {
        std::vector<std::string> args = expand_config_files(argc, argv, "train", add_train_options_scratch);
        std::reverse(args.begin(), args.end());  // CLI11 takes the words reversed, without argv[0]
        args.pop_back();
        app.parse(args);
        return -1;
    } catch (const Error& ex) {  // a config file
        std::fprintf(stderr, "error: %s\n", ex.what());
        return 2;
    } catch (const CLI::CallForHelp& ex) {
        return app.exit(ex);
    } catch (const CLI::CallForAllHelp& ex) {
        return app.exit(ex);
    } catch (const CLI::ParseError& ex) {
        std::fprintf(stderr, "error: %s (see --help)\n", ex.what());
        return 2;
    }
}

int main(int argc, char** argv) {
#if defined(DILOCO_HAVE_CUDA) || defined(DILOCO_EMULATE)
    register_cuda_backend();
#endif
    CLI::App app{"diloco: train decoder-only language models with DiLoCo, from scratch"};
    app.require_subcommand(1);
    // a repeated option takes its last value, so a script can append overrides to a command line
    app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);

    PrepareOptions prep;
    CLI::App* p = add_prepare_command(app, prep);
    RouteOptions route;
    CLI::App* ro = add_route_command(app, route);
    TrainOptions train;
    auto* t = app.add_subcommand("train", "train a model");
    add_train_options(t, train);
    GenerateOptions gen;
    std::string gen_run;
    CLI::App* g = add_generate_command(app, gen, gen_run);

    EvalCommand ev;
    CLI::App* e = add_eval_command(app, ev);

    BenchOptions bench;
    auto* b = app.add_subcommand("bench", "time one kernel in isolation");
    add_bench_options(b, bench);

    ExportImportCommand xi;
    const auto [ex, im] = add_export_import_commands(app, xi);

    app.add_subcommand("info", "build options, BLAS, threads, devices");

    if (const int code = parse_command_line(app, argc, argv); code >= 0) return code;

    if (*t || *b) share_cores_among_ranks();
    const bool mpi_started = start_mpi_for_training(argc, argv, t->parsed(), train);
    auto finish = [&](int code) {
#ifdef DILOCO_HAVE_MPI
        if (mpi_started) finalize_mpi(code);
#endif
        return code;
    };
    int world_rank = 0;
#ifdef DILOCO_HAVE_MPI
    if (mpi_started) MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
#endif

    try {
        gen.ckpt = checkpoint_of(gen.ckpt, gen_run, g->parsed());
        ev.ckpt = checkpoint_of(ev.ckpt, ev.run, e->parsed() && ev.modules.empty());
        xi.ckpt = checkpoint_of(xi.ckpt, xi.run, ex->parsed());
        if (*p) {
            prepare_dataset(prep);
        } else if (*ro) {
            route_data(route);
        } else if (*t) {
            run_train(train);
        } else if (*g) {
            std::string text = run_generate(gen);
            std::printf("%s%s\n", gen.prompt.c_str(), text.c_str());
        } else if (*e) {
            if (ev.routed)
                run_routed_eval(ev.ckpt, ev.modules, ev.data, ev.batch, ev.seq_len, ev.best_prefix);
            else
                run_eval(ev.ckpt, ev.data, ev.batches, ev.batch, ev.seq_len);
        } else if (*ex) {
            run_export(xi.ckpt, xi.out, xi.format);
        } else if (*im) {
            run_import(xi.in, xi.import_out);
        } else if (*b) {
            return run_bench(bench);
        } else {
            print_info();
        }
    } catch (const CollectiveError& ex) {
        // every rank detected it: rank 0 speaks for all, everyone leaves cleanly
        if (world_rank == 0) std::fprintf(stderr, "error: %s\n", ex.what());
        return finish(1);
    } catch (const std::exception& ex) {
        if (mpi_active()) {
            // one rank failed alone: say which, and take the job down rather than leave the
            // others waiting in a collective
            std::fprintf(stderr, "error: rank %d: %s\n", world_rank, ex.what());
            std::fflush(stderr);
            abort_job(1);
        }
        std::fprintf(stderr, "error: %s\n", ex.what());
        return finish(1);
    }
    return finish(0);
}
