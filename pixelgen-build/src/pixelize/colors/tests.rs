//! The solvers on their own; the stage as a whole is tested in `pixelize/tests.rs`.

use super::discover::{is_mixture, robust_centre};
use super::fit::solve;
use super::labels::solve3;
use super::*;

#[test]
fn solve3_recovers_a_known_solution_and_refuses_singular_systems() {
    let a = [[4.0, 1.0, 0.5], [1.0, 3.0, 0.2], [0.5, 0.2, 2.0]];
    let x = [0.25, -1.5, 3.0];
    let b: [f64; 3] = std::array::from_fn(|r| (0..3).map(|c| a[r][c] * x[c]).sum());
    let got = solve3(a, b).unwrap();
    for c in 0..3 {
        assert!((got[c] - x[c]).abs() < 1e-12, "{got:?}");
    }
    // Two equal rows: singular.
    assert_eq!(
        solve3([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [0.0, 1.0, 1.0]], b),
        None
    );
    assert_eq!(solve3([[0.0; 3]; 3], b), None);
}

#[test]
fn solve_handles_pivoting_and_three_right_hand_sides() {
    // A zero on the diagonal needs a row swap.
    let k = 3;
    let a = vec![0.0, 2.0, 1.0, 1.0, 1.0, 0.0, 3.0, 0.0, 1.0];
    let x = [[1.0, 2.0, 3.0], [-1.0, 0.5, 0.0], [2.0, -2.0, 1.0]];
    let b: Vec<[f64; 3]> = (0..k)
        .map(|r| std::array::from_fn(|c| (0..k).map(|j| a[r * k + j] * x[j][c]).sum()))
        .collect();
    let got = solve(a, b, k).unwrap();
    for r in 0..k {
        for c in 0..3 {
            assert!((got[r][c] - x[r][c]).abs() < 1e-12, "{got:?}");
        }
    }
    assert_eq!(solve(vec![1.0, 2.0, 2.0, 4.0], vec![[1.0; 3]; 2], 2), None);
}

#[test]
fn robust_centre_ignores_outliers_and_clipped_ends() {
    let mut histogram = [0u32; 256];
    for (value, n) in [(99, 10), (100, 30), (101, 10)] {
        histogram[value] = n;
    }
    // A few far outliers do not pull the centre.
    histogram[250] = 3;
    histogram[3] = 3;
    assert_eq!(robust_centre(&histogram, 56), 100);
    // Values piled up at the clipped end: the median itself.
    let mut clipped = [0u32; 256];
    clipped[255] = 20;
    clipped[254] = 5;
    assert_eq!(robust_centre(&clipped, 25), 255);
}

#[test]
fn a_colour_between_two_others_is_a_mixture_and_one_off_the_segment_is_not() {
    let colors = [[0.0, 0.0, 0.0], [200.0, 100.0, 0.0]];
    assert!(is_mixture(&colors, &[100.0, 50.0, 0.0], 5.0));
    assert!(is_mixture(&colors, &[101.0, 52.0, 3.0], 5.0));
    assert!(!is_mixture(&colors, &[100.0, 50.0, 40.0], 5.0));
    // Near an end is that colour, not a mixture.
    assert!(!is_mixture(&colors, &[2.0, 1.0, 0.0], 0.5));
}

#[test]
fn nearest_picks_the_closest_colour_in_oklab() {
    let colors = [[0.0, 0.0, 128.0], [100.0, 100.0, 255.0]];
    assert_eq!(nearest(&labs_of(&colors), [60.0, 60.0, 255.0]), 1);
    assert_eq!(nearest_all(&[[0.0, 0.0, 120.0]], &colors), [0]);
}
