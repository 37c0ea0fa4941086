;;; eglot_review.el --- Offload in a real Emacs with eglot, reviewed from start to restart -*- lexical-binding: t -*-

;; Run with `emacs --batch -l eglot_review.el'. Configured with the block of docs/editors.md
;; (OFFLOAD_CONFIG), whose commands are the user's moves, and `eglot-reconnect' for a restart.
;; Inputs come from the environment; the outcome is written as JSON to OFFLOAD_RESULT.

(require 'eglot)
(require 'json)
(require 'cl-lib)
(require 'python)

(defvar offload-out (list (cons 'errors nil) (cons 'states nil) (cons 'messages nil)))
(defvar offload-review nil "The proposals last published for calc.py.")

(defun offload-put (key value) (setf (alist-get key offload-out) value))
(defun offload-finish ()
  (with-temp-file (getenv "OFFLOAD_RESULT") (insert (json-encode offload-out)))
  (kill-emacs 0))
(defun offload-fail (message)
  (offload-put 'errors (list message))
  (offload-finish))
(defun offload-wait (predicate seconds what)
  "Serve the server's messages until PREDICATE holds, or fail saying WHAT."
  (let ((deadline (+ (float-time) seconds)))
    (while (and (not (funcall predicate)) (< (float-time) deadline))
      (accept-process-output nil 0.05))
    (unless (funcall predicate) (offload-fail (format "%s; buffer:\n%s" what (buffer-string))))))

;; the configuration of docs/editors.md, as it is written there
(load (getenv "OFFLOAD_CONFIG") nil t)
(cl-defmethod eglot-handle-notification :after (_server (_method (eql offload/taskUpdated)) &key taskId state
                                                        &allow-other-keys)
  (push (vector taskId state) (alist-get 'states offload-out)))
;; what the test watches: the proposals published, and the messages shown
(cl-defmethod eglot-handle-notification :before (_server (_method (eql textDocument/publishDiagnostics))
                                                         &key uri diagnostics &allow-other-keys)
  (when (string-suffix-p "/calc.py" uri)
    (setq offload-review (cl-remove-if-not (lambda (d) (equal (plist-get d :code) "proposal"))
                                           (append diagnostics nil)))))
(cl-defmethod eglot-handle-notification :before (_server (_method (eql window/showMessage)) &key message
                                                         &allow-other-keys)
  (push message (alist-get 'messages offload-out)))

(defun offload-finished (count)
  "Whether COUNT runs have finished; a run that failed ends the test."
  (let ((states (mapcar (lambda (s) (aref s 1)) (alist-get 'states offload-out))))
    (when (member (car states) '("failed" "cancelled"))
      (offload-fail (format "a run ended %s" (car states))))
    (= count (cl-count "finished" states :test #'equal))))
(defun offload-at (line command &rest args)
  "Run COMMAND of docs/editors.md with the point at the start of LINE."
  (goto-char (point-min))
  (forward-line (1- line))
  (apply command args))
(defun offload-text () (buffer-substring-no-properties (point-min) (point-max)))

(find-file (expand-file-name "calc.py" (getenv "OFFLOAD_REPO")))
(apply #'eglot (eglot--guess-contact))
(offload-wait (lambda () (eglot-current-server)) 30 "the server did not start")

;; a task from "fix the problem here" on the buggy line
(offload-at 5 #'offload-fix)
(offload-wait (lambda () (offload-finished 1)) 180 "the task did not finish")
(offload-wait (lambda () (= (length offload-review) 2)) 10 "no review")
(offload-put 'first_review (mapcar (lambda (d) (plist-get (plist-get (plist-get d :range) :start) :line))
                                   offload-review))

;; preview the fix whole, accept it, then type at the end of the buffer while its edit may still be on its way
(offload-at 5 #'offload-preview)
(offload-put 'preview (with-current-buffer "*Offload change*" (buffer-string)))
(offload-at 5 #'offload-accept)
(goto-char (point-max))
(insert "# typed while accepting\n")
(eglot--signal-textDocument/didChange)  ; what eglot's idle timer does, which batch mode never runs
(offload-put 'point_before (point))
(offload-wait (lambda () (string-match-p "a \\+ b" (offload-text))) 20 "the accepted hunk never arrived")
(offload-put 'point_after (point))
(offload-put 'after_accept (offload-text))

;; reject the comment
(offload-at 9 #'offload-reject)
(offload-wait (lambda () (null offload-review)) 10 "the rejected hunk is still shown")

;; follow up
(offload-at 1 #'offload-follow-up "Also document add")
(offload-wait (lambda () (and (offload-finished 2) (= (length offload-review) 1))) 180
              "the follow-up did not come back for review")

;; restart the server: the review is still there
(setq offload-review nil)
(eglot-reconnect (eglot-current-server))
(offload-wait (lambda () (= (length offload-review) 1)) 30 "no review after the restart")
(offload-put 'review_after_restart (plist-get (car offload-review) :message))

;; accept the follow-up's hunk
(offload-at (1+ (plist-get (plist-get (plist-get (car offload-review) :range) :start) :line)) #'offload-accept)
(offload-wait (lambda () (and (string-match-p "Sum of a and b" (offload-text)) (null offload-review))) 20
              "the follow-up's hunk never arrived")
(offload-put 'buffer (offload-text))
(offload-put 'modified (buffer-modified-p))
(offload-finish)
