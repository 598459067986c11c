//! Every public type can cross threads and live in shared server state.

use palisade_pkce::{
    AuthorizationUrl, AuthorizationUrlError, ChallengeError, ChallengeMethod, CodeChallenge,
    CodeVerifier, GenerateError, Nonce, RandomError, ServerPolicy, State, VerifierError,
    VerifyError,
};

const fn assert_send_sync_unpin<T: Send + Sync + Unpin + 'static>() {}

#[test]
fn public_types_are_send_sync_and_unpin() {
    const {
        assert_send_sync_unpin::<AuthorizationUrl>();
        assert_send_sync_unpin::<AuthorizationUrlError>();
        assert_send_sync_unpin::<ChallengeError>();
        assert_send_sync_unpin::<ChallengeMethod>();
        assert_send_sync_unpin::<CodeChallenge>();
        assert_send_sync_unpin::<CodeVerifier>();
        assert_send_sync_unpin::<GenerateError>();
        assert_send_sync_unpin::<Nonce>();
        assert_send_sync_unpin::<RandomError>();
        assert_send_sync_unpin::<ServerPolicy>();
        assert_send_sync_unpin::<State>();
        assert_send_sync_unpin::<VerifierError>();
        assert_send_sync_unpin::<VerifyError>();
    }
}
