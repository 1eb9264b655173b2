// Host cost of choosing a cuBLASLt algorithm for a new M, for the Llama-3.1-8B shapes in
// bfloat16: cublasLtMatmulAlgoGetHeuristic (8 candidates), cublasLtMatmulAlgoCheck of the
// algorithm picked at M + 32, and cublasLtMatmul enqueued with that algorithm (its own checks),
// each in microseconds, the median of several calls. Build and run on a GPU machine:
//   g++ -O2 -std=c++17 choice_cost.cpp -I/usr/local/cuda/include -L/usr/local/cuda/lib64 \
//     -lcublasLt -lcudart -o choice_cost && ./choice_cost
#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CHECK_CUDA(x) do { cudaError_t e = (x); if (e != cudaSuccess) { std::printf("%s: %s\n", #x, cudaGetErrorString(e)); std::exit(1); } } while (0)
#define CHECK_LT(x) do { cublasStatus_t s = (x); if (s != CUBLAS_STATUS_SUCCESS) { std::printf("%s: status %d\n", #x, (int)s); std::exit(1); } } while (0)

using Clock = std::chrono::steady_clock;
static double us(Clock::time_point a) { return std::chrono::duration<double, std::micro>(Clock::now() - a).count(); }
static double median(std::vector<double> v) { std::sort(v.begin(), v.end()); return v[v.size() / 2]; }

int main()
{
    int const shapes[][2] = {{6144, 4096}, {4096, 4096}, {28672, 4096}, {4096, 14336}, {128256, 4096}};
    int const ms[] = {8000, 2976, 1500, 200};
    size_t const maxM = 8192, maxN = 128256, maxK = 14336;
    void *a, *w, *c, *ws;
    size_t const wsBytes = 32u << 20;
    CHECK_CUDA(cudaMalloc(&a, maxM * maxK * 2));
    CHECK_CUDA(cudaMalloc(&w, maxN * 4096 * 2 > 28672 * maxK * 2 ? maxN * 4096 * 2 : 28672 * maxK * 2));
    CHECK_CUDA(cudaMalloc(&c, maxM * maxN * 2));
    CHECK_CUDA(cudaMalloc(&ws, wsBytes));
    cudaStream_t stream;
    CHECK_CUDA(cudaStreamCreate(&stream));
    cublasLtHandle_t h;
    CHECK_LT(cublasLtCreate(&h));
    std::printf("%8s %6s %6s %18s %18s %18s  (median / first call, us)\n", "N", "K", "M", "heuristic", "algo check", "matmul");
    for (auto const& s : shapes)
    {
        int const n = s[0], k = s[1];
        cublasLtMatmulDesc_t desc;
        CHECK_LT(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
        cublasOperation_t tA = CUBLAS_OP_T, tB = CUBLAS_OP_N;
        CHECK_LT(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &tA, sizeof(tA)));
        CHECK_LT(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &tB, sizeof(tB)));
        cublasLtMatmulPreference_t pref;
        CHECK_LT(cublasLtMatmulPreferenceCreate(&pref));
        uint64_t wsb = wsBytes;
        CHECK_LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsb, sizeof(wsb)));
        for (int m : ms)
        {
            auto layouts = [&](int rows, cublasLtMatrixLayout_t* l)
            {
                CHECK_LT(cublasLtMatrixLayoutCreate(&l[0], CUDA_R_16BF, k, n, k));
                CHECK_LT(cublasLtMatrixLayoutCreate(&l[1], CUDA_R_16BF, k, rows, k));
                CHECK_LT(cublasLtMatrixLayoutCreate(&l[2], CUDA_R_16BF, n, rows, n));
            };
            cublasLtMatrixLayout_t near[3], here[3];
            layouts(m + 32, near);
            layouts(m, here);
            cublasLtMatmulHeuristicResult_t results[8];
            int found = 0;
            std::vector<double> heur, check, run;
            for (int i = 0; i < 7; ++i)  // a new M each call: nothing the library may keep applies
            {
                cublasLtMatrixLayout_t l[3];
                layouts(m - 1 - i, l);
                auto t = Clock::now();
                CHECK_LT(cublasLtMatmulAlgoGetHeuristic(h, desc, l[0], l[1], l[2], l[2], pref, 8, results, &found));
                heur.push_back(us(t));
                for (auto& x : l) cublasLtMatrixLayoutDestroy(x);
            }
            CHECK_LT(cublasLtMatmulAlgoGetHeuristic(h, desc, near[0], near[1], near[2], near[2], pref, 8, results, &found));
            cublasLtMatmulAlgo_t algo = results[0].algo;
            cublasStatus_t checked = CUBLAS_STATUS_SUCCESS;
            for (int i = 0; i < 7; ++i)
            {
                cublasLtMatrixLayout_t l[3];
                layouts(m - 1 - i, l);
                cublasLtMatmulHeuristicResult_t r{};
                auto t = Clock::now();
                checked = cublasLtMatmulAlgoCheck(h, desc, l[0], l[1], l[2], l[2], &algo, &r);
                check.push_back(us(t));
                for (auto& x : l) cublasLtMatrixLayoutDestroy(x);
            }
            float alpha = 1.0F, beta = 0.0F;
            cublasStatus_t ran = CUBLAS_STATUS_SUCCESS;
            for (int i = 0; i < 7; ++i)
            {
                cublasLtMatrixLayout_t l[3];
                layouts(m - 1 - i, l);
                CHECK_CUDA(cudaStreamSynchronize(stream));
                auto t = Clock::now();
                ran = cublasLtMatmul(h, desc, &alpha, w, l[0], a, l[1], &beta, c, l[2], c, l[2], &algo, ws, wsBytes, stream);
                run.push_back(us(t));
                CHECK_CUDA(cudaStreamSynchronize(stream));
                for (auto& x : l) cublasLtMatrixLayoutDestroy(x);
            }
            CHECK_CUDA(cudaStreamSynchronize(stream));
            std::printf("%8d %6d %6d %9.1f / %6.1f %9.1f / %6.1f %9.1f / %6.1f  (check %d, matmul %d)\n", n, k, m,
                median(heur), heur[0], median(check), check[0], median(run), run[0], (int)checked, (int)ran);
            for (int i = 0; i < 3; ++i) { cublasLtMatrixLayoutDestroy(near[i]); cublasLtMatrixLayoutDestroy(here[i]); }
        }
        cublasLtMatmulPreferenceDestroy(pref);
        cublasLtMatmulDescDestroy(desc);
    }
    return 0;
}
